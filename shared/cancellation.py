"""Cancellation of sent tasks: what both sides share (Redis keys, the report, the interrupt).

The producer records every message it sends (:func:`register_sent`): key
``greenroom-sent:<id>`` holds the task, its queue and whether it stores results, and
expires when the message's delay and its result TTL have passed. :func:`cancel` reads
that record and the message's result key: a message never recorded is ``unknown``, one
with a result ``finished`` (a cancelled mark there: ``already cancelled``); any other is
added to the sorted set ``greenroom-cancellations`` (member the id, score its expiry in
epoch ms) and announced on the pub/sub channel ``greenroom-cancellations:<db>`` (channels
are server-wide, so the channel names the Redis database). A worker
(:mod:`shared.runtime.cancellation`) keeps that set in memory: it skips a cancelled
message when it gets it, and interrupts a running one whose contract is ``cancellable``
by raising :class:`CancelledWhileRunning` in its thread.

Each message gets a :class:`CancelReport`, whose ``line`` says what happened:

>>> report_for("6b8e", None, "unknown").line
'message 6b8e: unknown (never sent by a greenroom producer, or its record expired)'
>>> report_for("6b8e", SentRecord("echo", "default", True, cancellable=True), "cancelled").line
'message 6b8e (task echo): cancelled'
>>> report_for("6b8e", SentRecord("echo", "default", True), "cancelled").line
'message 6b8e (task echo): cancelled (if it is running already, it finishes: the task is not cancellable)'
>>> report_for("6b8e", SentRecord("echo", "default", False), "cancelled").line
'message 6b8e (task echo): cancelled (the task stores no results: it may have run already)'
>>> report_for("6b8e", SentRecord("echo", "default", True), "finished", "it succeeded").line
'message 6b8e (task echo): finished, not cancelled (it succeeded)'
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from dramatiq.middleware import Interrupt
from dramatiq.results import ResultFailure

from observability.task_logging import CANCELLED_OPTION
from shared.result_marks import CANCELLED_TYPE, STOPPED_TYPE

if TYPE_CHECKING:  # a worker imports this module; redis-py only once it boots (runtime.cancellation)
    import dramatiq
    import redis

    from shared.results import RedisResultBackend

__all__ = [
    "CANCELLED_OPTION",
    "CancelReport",
    "CancelledWhileRunning",
    "cancel",
    "register_sent",
]

#: Prefix of the sent-message registry: ``greenroom-sent:<message id>`` -> a :class:`SentRecord`.
SENT_PREFIX = "greenroom-sent:"
#: The sorted set of pending cancellations (member: message id, score: expiry in epoch ms),
#: and the prefix of the pub/sub channel that announces new ones (``<prefix>:<db>``).
CANCELLATIONS_KEY = "greenroom-cancellations"


class CancelledWhileRunning(Interrupt):
    """Raised in a worker thread whose task was cancelled while running (its contract is
    ``cancellable``): the task stops, is not retried, and its result is the cancelled mark."""


CancelStatus = Literal["cancelled", "already cancelled", "finished", "unknown"]


@dataclass(frozen=True, slots=True)
class CancelReport:
    """What a cancel did for one message: ``status`` and one line saying it."""

    message_id: str
    task: str | None
    status: CancelStatus
    line: str

    @property
    def cancelled(self) -> bool:
        """Whether the message is now (or already was) marked cancelled."""
        return self.status in ("cancelled", "already cancelled")


class SentRecord(NamedTuple):
    """What the registry keeps of a sent message: enough to find its result key, and whether
    its task is ``cancellable`` (what a cancel does to it once it runs)."""

    task: str
    queue: str
    store_results: bool
    cancellable: bool = False

    def encode(self) -> str:
        return json.dumps(
            {
                "task": self.task,
                "queue": self.queue,
                "results": self.store_results,
                "cancellable": self.cancellable,
            }
        )

    @classmethod
    def decode(cls, data: bytes | str | None) -> SentRecord | None:
        """The record stored as ``data``; None if there is none or it is not one.

        >>> SentRecord.decode(SentRecord("echo", "default", True).encode())
        SentRecord(task='echo', queue='default', store_results=True, cancellable=False)
        >>> SentRecord.decode(b"[1]") is None
        True
        """
        try:
            value = json.loads(data) if data is not None else {}
            return cls(
                str(value["task"]),
                str(value["queue"]),
                value["results"] is True,
                value.get("cancellable") is True,
            )
        except (ValueError, TypeError, KeyError):
            return None


def channel_name(client: redis.Redis[Any]) -> str:
    """The pub/sub channel that announces cancellations in ``client``'s database."""
    database = client.connection_pool.connection_kwargs.get("db", 0)
    return f"{CANCELLATIONS_KEY}:{database}"


#: Sets each key (KEYS) to ARGV[1] for ARGV[2] ms: one command for a batch, not one per message.
SET_ALL_SCRIPT = "for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end"


def register_sent(
    client: redis.Redis[Any], messages: Sequence[dramatiq.Message[Any]], ttl_ms: Sequence[int]
) -> None:
    """Record ``messages`` as sent, each for its ``ttl_ms``: one command per (record, TTL)
    among them, a SET for one message, else a script that sets them all (a send_many's
    messages share both: one command, a few us a message instead of some 20 in a pipeline).
    Raises redis-py's errors (the caller decides what a missing record costs)."""
    batches: dict[tuple[str, int], list[str]] = {}
    records: dict[tuple[str, str], str] = {}  # one record per task and queue, not one per message
    for message, ttl in zip(messages, ttl_ms, strict=True):
        task = (message.actor_name, message.queue_name)
        record = records.get(task)
        if record is None:
            record = records[task] = _record(message)
        batches.setdefault((record, max(1, ttl)), []).append(SENT_PREFIX + message.message_id)
    if len(batches) == 1 and len(messages) == 1:
        ((record, ttl), (key,)), *_ = batches.items()
        client.set(key, record, px=ttl)
        return
    set_all = client.register_script(SET_ALL_SCRIPT)  # EVALSHA; loaded into Redis on first use
    for (record, ttl), keys in batches.items():
        set_all(keys=keys, args=[record, ttl])


def cancel(
    client: redis.Redis[Any], backend: RedisResultBackend, message_ids: Sequence[str], *, min_ttl_ms: int
) -> list[CancelReport]:
    """Cancel ``message_ids`` (see the module); one report each, in order.

    A pending cancellation lasts as long as the message's record (at least
    ``min_ttl_ms``). Two round trips whatever the number of ids; raises redis-py's errors.
    """
    with client.pipeline(transaction=False) as pipe:
        for message_id in message_ids:
            pipe.get(f"{SENT_PREFIX}{message_id}")
            pipe.pttl(f"{SENT_PREFIX}{message_id}")
            pipe.zscore(CANCELLATIONS_KEY, message_id)
        looked_up = pipe.execute()
    records = [SentRecord.decode(data) for data in looked_up[0::3]]
    with client.pipeline(transaction=False) as pipe:
        for message_id, record in zip(message_ids, records, strict=True):
            if record is not None:
                pipe.lindex(_result_key(backend, message_id, record), 0)
        stored = iter(pipe.execute())
    now_ms = int(time.time() * 1000)
    reports: list[CancelReport] = []
    marked: dict[str | bytes, int] = {}
    for index, message_id in enumerate(message_ids):
        record, ttl, score = records[index], looked_up[3 * index + 1], looked_up[3 * index + 2]
        if record is None:
            reports.append(report_for(message_id, None, "unknown"))
            continue
        finished = _finished(backend, next(stored))
        if finished == "cancelled" or (finished is None and score is not None):
            reports.append(report_for(message_id, record, "already cancelled"))
        elif finished is not None:
            reports.append(report_for(message_id, record, "finished", finished))
        else:
            marked[message_id] = now_ms + max(int(ttl), min_ttl_ms)
            reports.append(report_for(message_id, record, "cancelled"))
    if marked:
        with client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(CANCELLATIONS_KEY, "-inf", now_ms)
            pipe.zadd(CANCELLATIONS_KEY, marked)
            pipe.publish(channel_name(client), json.dumps([str(message_id) for message_id in marked]))
            pipe.execute()
    return reports


def report_for(
    message_id: str, record: SentRecord | None, status: CancelStatus, detail: str = ""
) -> CancelReport:
    """The report of ``status`` for ``message_id`` (``detail``: how a finished one ended)."""
    if record is None:
        line = f"message {message_id}: unknown (never sent by a greenroom producer, or its record expired)"
        return CancelReport(message_id, None, status, line)
    line = f"message {message_id} (task {record.task}): "
    if status == "finished":
        line += f"finished, not cancelled ({detail})"
    elif status == "cancelled" and not record.store_results:
        line += "cancelled (the task stores no results: it may have run already)"
    elif status == "cancelled" and not record.cancellable:
        line += "cancelled (if it is running already, it finishes: the task is not cancellable)"
    else:
        line += status
    return CancelReport(message_id, record.task, status, line)


def _record(message: dramatiq.Message[Any]) -> str:
    """The encoded :class:`SentRecord` of ``message`` (a task this process does not know
    is taken to store results)."""
    from shared.tasks import TASKS  # the contracts this process knows

    contract = TASKS.get(message.actor_name)
    store_results = bool(contract.store_results) if contract is not None else True
    cancellable = bool(contract.cancellable) if contract is not None else False
    return SentRecord(message.actor_name, message.queue_name, store_results, cancellable).encode()


def _result_key(backend: RedisResultBackend, message_id: str, record: SentRecord) -> str:
    import dramatiq

    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=record.queue, actor_name=record.task, args=(), kwargs={}, options={}, message_id=message_id
    )
    return str(backend.build_message_key(message))


def _finished(backend: RedisResultBackend, data: bytes | None) -> str | None:
    """How the message whose stored result is ``data`` ended: ``cancelled``, a phrase for a
    finished one, or None when nothing is stored."""
    if data is None:
        return None
    try:
        backend.unwrap_result(backend.encoder.decode(data))
    except ResultFailure as failure:
        if failure.orig_exc_type == CANCELLED_TYPE:
            return "cancelled"
        if failure.orig_exc_type == STOPPED_TYPE:
            return "it will not run: an earlier step of its workflow failed"
        return f"it failed: {failure.orig_exc_type}"
    except Exception:  # not what a worker stores: something is there, so it ran
        return "a result is stored"
    return "it succeeded"
