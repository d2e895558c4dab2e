"""FreezeBootObjects: a worker's boot objects leave the collector's passes, garbage does not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from shared.runtime.boot_freeze import FreezeBootObjects


class Node:
    other: object = None


@pytest.fixture
def collector_held() -> Iterator[None]:
    """No automatic collection during the test; nothing frozen before or after it."""
    gc.disable()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.enable()


def test_objects_alive_at_worker_boot_are_frozen_after_garbage_is_collected(collector_held: None) -> None:
    # Given: a live object, and a reference cycle that is already garbage
    alive = Node()
    garbage = Node()
    garbage.other = garbage
    collected = weakref.ref(garbage)
    del garbage
    assert collected() is not None
    broker = StubBroker(middleware=[FreezeBootObjects()])

    # When: a worker boots
    broker.emit_before("worker_boot", dramatiq.Worker(broker, worker_threads=1))

    # Then: the garbage is gone and the live object is in the permanent generation
    assert collected() is None
    assert gc.get_freeze_count() > 0
    assert all(o is not alive for o in gc.get_objects())  # get_objects() leaves out frozen objects
    broker.close()
