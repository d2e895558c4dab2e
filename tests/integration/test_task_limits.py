"""TaskLimits on real Redis: a slot is held from start to finish, and one never freed expires on its own."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage

from observability.task_logging import THROTTLED_OPTION
from shared.runtime import task_limits
from shared.runtime.task_limits import KEY_PREFIX, THROTTLES_OPTION, TaskLimits
from shared.settings import load_settings
from shared.tasks import TASKS, TaskArguments, TaskContract


class NoArguments(TaskArguments):
    pass


@pytest.fixture
def contract() -> Iterator[TaskContract]:
    """A one-at-a-time contract with a 0.2 s time limit, under a name of its own (not in TASKS)."""
    name = f"limits-{uuid.uuid4().hex[:8]}"
    declared = TaskContract(
        name=name,
        queue="limits",
        arguments=NoArguments,
        description="test",
        concurrency_limit=1,
        time_limit_seconds=0.2,
    )
    yield declared
    TASKS.forget(name)  # a test's own contract, not left for others


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(f"{KEY_PREFIX}:*limits-*"))
    if keys:
        client.delete(*keys)
    client.close()


def _message(contract: TaskContract) -> MessageProxy:
    return MessageProxy(dramatiq.Message(contract.queue, contract.name, (), {}, {}))


def _in_thread(call: object) -> BaseException | None:
    """Run ``call`` in another thread (slots are held per thread); the exception it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()  # type: ignore[operator]
        except BaseException as error:  # handed back to the test
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised[0] if raised else None


def test_a_slot_is_held_while_the_task_runs_and_freed_after(
    contract: TaskContract, client: redis.Redis[bytes], redis_url: str
) -> None:
    settings = load_settings(_env_file=None, REDIS_URL=redis_url, RESULT_STORE_RETRY_SECONDS=1)
    limits = TaskLimits(settings, contract_of={contract.name: contract}.get)
    broker = StubBroker()
    broker.declare_queue(contract.queue)
    key = f"{KEY_PREFIX}:concurrency:{contract.name}:0"

    # Given: a task holding the only slot
    first = _message(contract)
    limits.before_process_message(broker, first)
    assert client.get(key) == b"1"
    ttl = client.pttl(key)
    assert 60_000 < ttl <= (0.2 + 1 + 60) * 1000  # past its time limit and result storage

    # When: another starts meanwhile, on another thread
    second = _message(contract)
    raised = _in_thread(lambda: limits.before_process_message(broker, second))

    # Then: it is skipped and a delayed copy is on the queue, one throttle more, no retry counted
    assert isinstance(raised, SkipMessage)
    assert second.options[THROTTLED_OPTION]["reason"] == "concurrency_limit 1 reached"
    assert second.options["store_results"] is False  # no None result stored for the skipped one
    [copy] = [dramatiq.Message.decode(body) for body in _bodies(broker, contract.queue)]
    assert copy.message_id == second.message_id
    assert copy.options[THROTTLES_OPTION] == 1
    assert "retries" not in copy.options and THROTTLED_OPTION not in copy.options
    assert client.pttl(key) <= ttl  # a refused attempt does not keep the slot alive

    # And: once the first is processed, its slot is free
    limits.after_process_message(broker, first, result=None)
    assert client.get(key) == b"0"
    assert _in_thread(lambda: limits.before_process_message(broker, _message(contract))) is None
    limits.close()


def test_a_slot_never_freed_expires_on_its_own(
    contract: TaskContract, client: redis.Redis[bytes], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: slots that live 0.2 s time limit + 0 s result storage + 0.3 s
    monkeypatch.setattr(task_limits, "SLOT_TTL_MARGIN_SECONDS", 0.3)
    settings = load_settings(_env_file=None, REDIS_URL=redis_url, RESULT_STORE_RETRY_SECONDS=0)
    limits = TaskLimits(settings, contract_of={contract.name: contract}.get)
    broker = StubBroker()
    broker.declare_queue(contract.queue)

    # When: a worker thread takes the slot and is never heard of again (SIGKILL: no after hook runs;
    # the thread is kept alive, as its slot would be released when its objects are collected)
    taken, end = threading.Event(), threading.Event()

    def take_and_hang() -> None:
        limits.before_process_message(broker, _message(contract))
        taken.set()
        end.wait(10)

    hung = threading.Thread(target=take_and_hang, daemon=True)
    hung.start()
    try:
        assert taken.wait(5)
        assert isinstance(
            _in_thread(lambda: limits.before_process_message(broker, _message(contract))), SkipMessage
        )
        time.sleep(0.6)

        # Then: the slot is free again
        assert _in_thread(lambda: limits.before_process_message(broker, _message(contract))) is None
    finally:
        end.set()
        hung.join()
        limits.close()


def _bodies(broker: StubBroker, queue: str) -> list[bytes]:
    """The bodies on ``queue`` and its delay queue (a StubBroker's delayed enqueue goes there)."""
    bodies = []
    for name in (queue, f"{queue}.DQ"):
        stub_queue = broker.queues.get(name)
        while stub_queue is not None and not stub_queue.empty():
            bodies.append(stub_queue.get_nowait())
    return bodies
