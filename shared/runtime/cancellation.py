"""A worker's part of cancellation (:mod:`shared.cancellation`).

Every worker process keeps the pending cancellations in memory, so the check on
each message costs an ``if`` while none is pending and a set lookup while some are:

- at boot (``after_process_boot``, before any message is consumed) the pending set
  (``greenroom-cancellations``, those not expired) is loaded once, with a short
  timeout; Redis away: one WARNING, and the worker starts anyway;
- then a daemon thread subscribes to ``greenroom-cancellations:<db>`` (a cancel
  announces its ids there) and reloads the whole set every
  :data:`RELOAD_SECONDS` and after each reconnect (backoff up to
  :data:`MAX_RECONNECT_SECONDS`), so a worker that missed an announcement (it was
  restarting, its connection dropped) still learns of the cancel; it stops at shutdown.

A cancelled message is skipped when a worker gets it: option ``greenroom_cancelled``
set (the task line says ``cancelled``, the metrics count outcome ``cancelled``), the
cancelled mark stored as its result (a waiting producer raises TaskCancelled), and
``SkipMessage`` (acknowledged, not retried). A running task whose contract is
``cancellable`` is interrupted as a time limit interrupts one (Dramatiq's
``raise_thread_exception``: the exception arrives at the thread's next Python
bytecode, not inside a C call such as one long ``time.sleep``); it is neither
retried nor dead-lettered, and its result is the cancelled mark. A task not
cancellable runs to its end; its result stands.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage, raise_thread_exception
from dramatiq.results import Results

from observability.task_logging import was_cancelled
from shared.backoff import Backoff
from shared.cancellation import CANCELLATIONS_KEY, CANCELLED_OPTION, CancelledWhileRunning, channel_name
from shared.result_marks import cancelled_mark
from shared.settings import Settings
from shared.tasks import TASKS, TaskContract

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import redis

logger = logging.getLogger("greenroom.cancellation")

#: The pending set is reloaded this often (and after every reconnect), whatever was announced.
RELOAD_SECONDS = 5.0
#: Waits between reconnects while Redis is away.
RECONNECT_BACKOFF = Backoff(first_delay=0.5, max_delay=10.0)
MAX_RECONNECT_SECONDS = RECONNECT_BACKOFF.max_delay
#: Socket timeouts of the boot load (short: a worker must not hang at start) and of the thread's reads.
BOOT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 5.0
#: The longest the thread waits for an announcement before it looks whether to stop or
#: reload (a worker's shutdown waits for it that long at most), and the longest a shutdown
#: waits for the thread (a daemon: with Redis hanging, the process exits without it).
POLL_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 0.5


#: The logger of Dramatiq's worker threads, which logs an interrupted task's traceback at ERROR.
DRAMATIQ_WORKER_LOGGER = "dramatiq.worker.WorkerThread"


class InterruptLineFilter(logging.Filter):
    """Drops Dramatiq's ERROR line (a traceback, the arguments quoted whole) for a task a
    cancel interrupted: the task line says ``cancelled`` already, at INFO.

    >>> record = logging.makeLogRecord({"exc_info": (CancelledWhileRunning, CancelledWhileRunning(), None)})
    >>> InterruptLineFilter().filter(record), InterruptLineFilter().filter(logging.makeLogRecord({}))
    (False, True)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], CancelledWhileRunning))


class _Running:
    """A cancellable task running in a worker thread."""

    __slots__ = ("interrupted", "message", "thread_id")

    def __init__(self, message: MessageProxy, thread_id: int) -> None:
        self.message = message
        self.thread_id = thread_id
        self.interrupted = False


class Cancellation(Middleware):
    """Skips cancelled messages and interrupts cancellable running ones (see the module)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Callable[[float], redis.Redis[Any]] | None = None,
        contract_of: Callable[[str], TaskContract | None] = TASKS.get,
    ) -> None:
        self.settings = settings
        self._client_factory = client or (lambda timeout: _redis_client(settings, timeout))
        self._contract_of = contract_of
        #: Pending cancellations: message id -> expiry (epoch ms). Replaced whole by a reload,
        #: added to on an announcement; only the background thread (or boot) writes it.
        self._pending: dict[str, int] = {}
        #: The actors whose contract is ``cancellable`` (known once the worker module declared them).
        self._cancellable: frozenset[str] = frozenset()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._results: Results | None = None
        self._connected = False

    # -- lifecycle

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self._results = next((m for m in broker.middleware if isinstance(m, Results)), None)
        self._cancellable = frozenset(
            name
            for name in broker.get_declared_actors()
            if getattr(self._contract_of(name), "cancellable", False)
        )
        self._connected = True  # the thread tells the first outage, unless the boot load told it
        try:
            client = self._client_factory(BOOT_TIMEOUT_SECONDS)
            try:
                self._reload(client)
            finally:
                client.close()
        except Exception as error:  # Redis away or refusing: the thread keeps trying
            self._connected = False
            logger.warning(
                "Could not load pending cancellations (%s); the worker starts without them and keeps trying",
                _describe(error),
            )
        if self._cancellable:
            logging.getLogger(DRAMATIQ_WORKER_LOGGER).addFilter(InterruptLineFilter())
        self._thread = threading.Thread(target=self._listen, name="greenroom-cancellations", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)

    # -- per message

    def is_cancelled(self, message_id: str) -> bool:
        """Whether ``message_id`` is known (to this process) to be cancelled."""
        return message_id in self._pending

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self._pending and message.message_id in self._pending:
            self._skip(broker, message)
        if self._cancellable and message.actor_name in self._cancellable:
            with self._lock:
                self._running[message.message_id] = _Running(message, threading.get_ident())
            if message.message_id in self._pending:  # cancelled while it was being registered
                self._interrupt([message.message_id])

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self._running:  # a cancellable task runs in this process (else: nothing but this if)
            with self._lock:
                self._running.pop(message.message_id, None)
        # Interrupted, in the task or (a cancel racing its end) in a middleware's after hook. The
        # option is never taken back, also when the task caught the interrupt and returned (its
        # result stands): an interrupt still pending here must not make a retry of it.
        if exception is not None and was_cancelled(message):
            self._store_mark(broker, message)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self._running:
            with self._lock:
                self._running.pop(message.message_id, None)

    # -- inside

    def _skip(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        message.options[CANCELLED_OPTION] = True
        self._store_mark(broker, message)
        message.options["store_results"] = False  # so Results does not store None over the mark
        raise SkipMessage("cancelled")

    def _store_mark(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Store the cancelled mark as ``message``'s result, if its task stores results."""
        if self._results is None:
            return
        options = _actor_options(broker, message.actor_name)
        if not message.options.get("store_results", options.get("store_results", False)):
            return
        ttl = message.options.get("result_ttl", options.get("result_ttl", self._results.result_ttl))
        try:
            self._results.backend.store_exception(
                message, cancelled_mark(message.actor_name, message.message_id), ttl
            )
        except Exception as error:  # Redis away past the backend's retries: a waiting producer times out
            logger.warning(
                "Could not store the cancelled mark of message %s (%s)", message.message_id, _describe(error)
            )

    def _interrupt(self, message_ids: Iterable[str]) -> None:
        """Interrupt the running cancellable tasks of ``message_ids`` (each once)."""
        with self._lock:
            for message_id in message_ids:
                running = self._running.get(message_id)
                if running is None or running.interrupted:
                    continue
                running.interrupted = True
                running.message.options[CANCELLED_OPTION] = True
                logger.info("Interrupting cancelled message %s", message_id)
                raise_thread_exception(running.thread_id, CancelledWhileRunning)

    def _reload(self, client: redis.Redis[Any]) -> None:
        now_ms = int(time.time() * 1000)
        entries = client.zrangebyscore(CANCELLATIONS_KEY, now_ms, "+inf", withscores=True)
        self._pending = {_text(member): int(score) for member, score in entries}
        if self._running and self._pending:
            self._interrupt([message_id for message_id in list(self._running) if message_id in self._pending])

    def _announced(self, data: Any) -> None:
        try:
            message_ids = [str(message_id) for message_id in json.loads(data)]
        except (ValueError, TypeError):
            return  # not a cancel's announcement; the next reload has the truth
        for message_id in message_ids:
            self._pending.setdefault(message_id, 0)
        if self._running:
            self._interrupt(message_ids)

    def _listen(self) -> None:
        """Follow the announcements and reload the set, reconnecting with a backoff."""
        delays = RECONNECT_BACKOFF.delays()
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as error:
                if self._connected:  # one line per outage, not per attempt
                    logger.warning(
                        "Lost Redis for cancellations (%s); reconnecting (cancels announced meanwhile "
                        "are found by the reload on reconnect)",
                        _describe(error),
                    )
                    delays = RECONNECT_BACKOFF.delays()
                self._connected = False
                self._stop.wait(next(delays))

    def _follow(self) -> None:
        """Subscribe, reload, then follow announcements and reload periodically until stopped."""
        client = self._client_factory(SOCKET_TIMEOUT_SECONDS)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel_name(client))
            self._reload(client)  # after subscribing: nothing announced between is missed
            self._connected = True
            next_reload = time.monotonic() + RELOAD_SECONDS
            while not self._stop.is_set():
                announcement = pubsub.get_message(timeout=POLL_SECONDS)
                if announcement is not None and announcement.get("type") == "message":
                    self._announced(announcement["data"])
                if time.monotonic() >= next_reload:
                    self._reload(client)
                    next_reload = time.monotonic() + RELOAD_SECONDS
        finally:
            pubsub.close()
            client.close()


def _redis_client(settings: Settings, timeout: float) -> redis.Redis[Any]:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _actor_options(broker: dramatiq.Broker, actor_name: str) -> dict[str, Any]:
    try:
        return dict(broker.get_actor(actor_name).options)
    except dramatiq.ActorNotFound:
        return {}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _describe(error: BaseException) -> str:
    from shared.service_refusals import outage_line

    return outage_line(error)
