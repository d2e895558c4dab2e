"""Inspect, replay and purge dead-lettered messages (the ``<queue>.XQ`` queues).

Example (not run here: it needs RabbitMQ and a dead letter)::

    letters = DeadLetters(producer)
    [letter.message_id for letter in letters.list("default", limit=10)]   # nothing consumed
    # ['0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41']
    resolve_ids(["0c1f5a3e"], {"default": letters.ids("default")})  # or unambiguous prefixes (8+)
    # {'default': {'0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41'}}
    letters.replay("default", ids={"0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41"}, fresh_retries=True)
    # 1

Listing reads messages without acknowledging them and returns them all to the
queue. Replay republishes a message to the queue whose dead letter it is, with
publisher confirms (whatever BROKER_CONFIRM_DELIVERY says) and the message's own
trace context, so the replay joins the original trace, and only then removes
the dead letter: a crash in between leaves a duplicate, never a loss. A
replayed message counts as enqueued at the replay (its queue wait and age
start again). A dead letter is untrusted input like any message: one whose
fields are not those of a Dramatiq message is listed but never replayed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika.exceptions
import redis
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError
from dramatiq.results import ResultFailure, ResultMissing

from observability.metrics import READY_AT_OPTION
from shared.connections import checking_connection
from shared.errors import DeadLetterNotFound, excerpt
from shared.producer import Producer
from shared.strict_json import json_safe

#: How many dead letters one listing or replay reads at most unless told otherwise.
DEFAULT_LIMIT = 100
#: How many dead letters a replay or an id lookup reads at most.
REPLAY_LIMIT = 10_000
#: Dead letters republished together (one confirmation wait), then acknowledged.
REPLAY_CHUNK = 256
#: Shortest id prefix accepted for a dead letter (the README's examples use 8).
MIN_ID_PREFIX = 8
#: Options that date a message's earlier runs, dropped by a replay: the queue-wait metric
#: counts from READY_AT_OPTION (else message_timestamp), Dramatiq's worker delays by "eta".
_DATING_OPTIONS = ("eta", READY_AT_OPTION, "traceback")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    actor: str
    queue: str
    arguments: str
    error: str
    age_seconds: float
    message: dramatiq.Message[Any] | None

    def line(self) -> str:
        """One terminal line; what came from the message is shown with control characters escaped."""
        message_id, actor, arguments, error = map(
            printable, (self.message_id, self.actor, self.arguments, self.error)
        )
        return f"{message_id}  {actor:<24} {self.age_seconds:>8.0f}s  {arguments}  {error}"


def printable(text: str) -> str:
    r"""``text`` with every character a terminal would act on (escapes, newlines) written as an escape.

    >>> printable("\x1b[2Jid\nfake")
    '\\x1b[2Jid\\nfake'
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class DeadLetters:
    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def count(self, queue: str) -> int:
        """Dead letters of ``queue`` now (0 if its dead-letter queue was never declared)."""
        with self._channel() as channel:
            try:
                return int(channel.queue_declare(xq_name(queue), passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                return 0

    def list(self, queue: str, *, limit: int = DEFAULT_LIMIT) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, oldest first; all stay in the queue."""
        if not self.count(queue):
            return []
        with self._channel() as channel:
            letters = [letter for _tag, letter in self._read(channel, queue, limit)]
            # Closing the channel without acknowledging returns every message to the queue.
        return letters

    def ids(self, queue: str, *, limit: int = REPLAY_LIMIT) -> set[str]:
        """The message ids of up to ``limit`` replayable dead letters of ``queue``; all stay."""
        if not self.count(queue):
            return set()
        with self._channel() as channel:
            return {letter.message_id for _tag, letter in self._read(channel, queue, limit, errors=False)}

    def replay(
        self, queue: str, *, ids: set[str] | None, fresh_retries: bool, limit: int = REPLAY_LIMIT
    ) -> int:
        """Move dead letters (all, or those whose full message id is in ``ids``) back to
        ``queue``; return how many ids were replayed. Copies of a replayed id go too."""
        replayed: set[str] = set()
        # Only what is dead now: a replayed task may fail again and come back during this loop.
        waiting = min(limit, self.count(queue))
        if not waiting:
            return 0
        with self._channel() as channel:
            chunk: list[tuple[int, dramatiq.Message[Any]]] = []
            copies: list[int] = []  # tags of copies of a message in ``chunk``: acked once it is confirmed
            for tag, letter in self._read(channel, queue, waiting):
                if letter.message is None or not (ids is None or letter.message_id in ids):
                    continue
                if letter.message_id in replayed:
                    channel.basic_ack(tag)  # a copy of one replayed already: it would run twice
                elif any(message.message_id == letter.message_id for _, message in chunk):
                    copies.append(tag)
                else:
                    chunk.append((tag, _revived(letter.message, queue, fresh_retries=fresh_retries)))
                if len(chunk) == REPLAY_CHUNK:
                    replayed |= self._republish(channel, chunk, copies)
                    chunk, copies = [], []
            replayed |= self._republish(channel, chunk, copies)
        return len(replayed)

    def _republish(
        self, channel: Any, chunk: Sequence[tuple[int, dramatiq.Message[Any]]], copies: Sequence[int]
    ) -> set[str]:
        """Publish ``chunk`` confirmed, then acknowledge its dead letters (and ``copies``); their ids."""
        if not chunk:
            return set()
        messages = [message for _tag, message in chunk]
        self.producer.publish_confirmed(messages, f"{len(messages)} replayed dead letter(s)")
        for tag in [*(tag for tag, _message in chunk), *copies]:
            channel.basic_ack(tag)
        return {message.message_id for message in messages}

    def purge(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; return how many."""
        if not self.count(queue):
            return 0
        with self._channel() as channel:
            reply = channel.queue_purge(xq_name(queue))
            return int(reply.method.message_count)

    def _read(
        self, channel: Any, queue: str, limit: int, *, errors: bool = True
    ) -> Iterator[tuple[int, DeadLetter]]:
        """Up to ``limit`` dead letters, unacknowledged; ``errors``: look up their stored errors."""
        stored_error = self._stored_error if errors else _no_error
        for _ in range(limit):
            method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
            if method is None:
                return
            yield method.delivery_tag, _describe(queue, properties, body, stored_error)

    def _stored_error(self, message: dramatiq.Message[Any]) -> str:
        """The failure the worker stored as the task's result, if it stores results."""
        try:
            self.producer.backend.get_result(message, block=False)
        except ResultFailure as failure:
            return excerpt(f"{failure.orig_exc_type}: {failure.orig_exc_msg}", 200)
        except (ResultMissing, redis.RedisError, DecodeError, KeyError, TypeError, ValueError):
            return ""
        return ""

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        """A channel on a connection of its own; RabbitMQ refusing or missing is a GreenroomError
        (BrokerRefused, BrokerUnavailable)."""
        with checking_connection(self.producer.settings) as connection:
            yield connection.channel()


def resolve_ids(given: Iterable[str], known: dict[str, set[str]]) -> dict[str, set[str]]:
    """Map each id in ``given`` (a full message id, or an unambiguous prefix of
    MIN_ID_PREFIX or more characters) to the one dead letter it names among ``known``
    (queue -> its dead letters' ids); the full ids by queue. Raises DeadLetterNotFound,
    naming the id, if one matches none or more than one.

    >>> resolve_ids(["0c1f5a3e"], {"default": {"0c1f5a3e-2b8d-4c1e", "6b8e0d2a-77c3-41f0"}})
    {'default': {'0c1f5a3e-2b8d-4c1e'}}
    """
    found: dict[str, set[str]] = {}
    for wanted in given:
        matches = {(queue, wanted) for queue, ids in known.items() if wanted in ids}
        if not matches and len(wanted) >= MIN_ID_PREFIX:
            matches = {(queue, i) for queue, ids in known.items() for i in ids if i.startswith(wanted)}
        if len(matches) != 1:
            where = ", ".join(xq_name(queue) for queue in known)
            problem = "matches no dead letter" if not matches else f"matches {len(matches)} dead letters"
            raise DeadLetterNotFound(f"id {excerpt(repr(wanted), 70)} {problem} in {where}")
        queue, message_id = matches.pop()
        found.setdefault(queue, set()).add(message_id)
    return found


def _no_error(message: dramatiq.Message[Any]) -> str:
    return ""


def _revived(message: dramatiq.Message[Any], queue: str, *, fresh_retries: bool) -> dramatiq.Message[Any]:
    """``message`` as a replay publishes it: on ``queue`` (not whatever its body claims),
    enqueued now, without the options that dated its earlier runs."""
    options = {key: value for key, value in message.options.items() if key not in _DATING_OPTIONS}
    if fresh_retries:
        options.pop("retries", None)
    return dramatiq.Message(  # not message.copy(): that merges the old options back in
        queue_name=queue,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=int(time.time() * 1000),
    )


def _describe(
    queue: str, properties: Any, body: bytes, stored_error: Callable[[dramatiq.Message[Any]], str]
) -> DeadLetter:
    message = _decoded(body)
    dead_since = _dead_since(properties)
    if message is None:
        return DeadLetter(
            "?", "?", queue, f"<{len(body)} bytes, not a Dramatiq message>", "", dead_since, None
        )
    try:
        arguments = json.dumps(json_safe(message.kwargs or list(message.args)), default=str)
    except (RecursionError, ValueError):
        arguments = "<arguments nested too deeply to show>"
    return DeadLetter(
        message_id=message.message_id,
        actor=message.actor_name,
        queue=queue,
        arguments=excerpt(arguments, 60),
        error=stored_error(message),
        age_seconds=dead_since,
        message=message,
    )


def _decoded(body: bytes) -> dramatiq.Message[Any] | None:
    """The Dramatiq message in ``body``, or None if it is not one with sane fields."""
    try:
        message: dramatiq.Message[Any] = dramatiq.Message.decode(body)
    except DecodeError:
        return None
    fields_ok = (
        isinstance(message.message_id, str)
        and 0 < len(message.message_id) <= 255
        and isinstance(message.actor_name, str)
        and 0 < len(message.actor_name) <= 255
        and isinstance(message.args, (list, tuple))
        and isinstance(message.kwargs, dict)
        and isinstance(message.options, dict)
    )
    return message if fields_ok else None


def _dead_since(properties: Any) -> float:
    headers = properties.headers if isinstance(properties.headers, dict) else {}
    deaths = headers.get("x-death")
    died = (
        deaths[0].get("time") if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else None
    )
    timestamp = getattr(died, "timestamp", None)  # a datetime, from RabbitMQ
    return max(0.0, time.time() - timestamp()) if callable(timestamp) else 0.0
