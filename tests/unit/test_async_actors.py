"""``implements`` with an ``async def``: awaited on Dramatiq's event loop thread, validated first;
a plain function that returns a coroutine fails instead of "succeeding" with it unawaited.

The actors are called directly (as Dramatiq's worker thread calls them), on a StubBroker;
tests/e2e/test_async_actors.py runs them in real workers.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from dramatiq.logging import get_logger
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from shared.contracts.diagnostics import ECHO, EchoArguments
from shared.errors import InvalidTaskArguments
from workers.actor import NotAwaited, implements


@pytest.fixture(autouse=True)
def stub_broker() -> Iterator[StubBroker]:
    previous, stub = dramatiq.get_broker(), StubBroker()
    stub.add_middleware(Results(backend=StubBackend()))
    dramatiq.set_broker(stub)
    yield stub
    dramatiq.set_broker(previous)


@pytest.fixture
def event_loop_thread() -> Iterator[EventLoopThread]:
    """The event loop thread Dramatiq's AsyncIO middleware starts in a worker process."""
    loop_thread = EventLoopThread(get_logger(__name__))
    loop_thread.start(timeout=5)
    set_event_loop_thread(loop_thread)
    yield loop_thread
    set_event_loop_thread(None)
    loop_thread.stop()


def test_an_async_implementation_is_awaited_on_the_event_loop_thread(
    event_loop_thread: EventLoopThread,
) -> None:
    ran_on: list[threading.Thread] = []

    @implements(ECHO)
    async def echo(arguments: EchoArguments) -> Any:
        await asyncio.sleep(0.01)
        ran_on.append(threading.current_thread())
        return arguments.payload

    assert echo(payload={"x": 1}) == {"x": 1}
    assert ran_on == [event_loop_thread]


def test_an_async_implementation_is_validated_as_a_sync_one(event_loop_thread: EventLoopThread) -> None:
    called: list[EchoArguments] = []

    @implements(ECHO)
    async def echo(arguments: EchoArguments) -> Any:
        called.append(arguments)

    with pytest.raises(InvalidTaskArguments, match="delay_ms"):
        echo(payload=1, delay_ms=-1)
    with pytest.raises(InvalidTaskArguments, match="positional arguments are not accepted"):
        echo(1)
    assert called == []
    assert echo.options["throws"] == (InvalidTaskArguments, NotAwaited)  # rejected without retry, as for sync


def test_a_plain_function_returning_a_coroutine_fails_and_the_coroutine_never_runs() -> None:
    ran: list[str] = []

    async def work(payload: Any) -> Any:
        ran.append("ran")
        return payload

    @implements(ECHO)
    def echo(arguments: EchoArguments) -> Any:
        return work(arguments.payload)  # forgot async def and await

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited"
        with pytest.raises(
            TypeError, match="task 'echo': its implementation returned coroutine without awaiting it"
        ):
            echo(payload=1)
        gc.collect()
    assert ran == []
