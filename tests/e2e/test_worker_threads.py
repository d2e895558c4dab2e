"""A worker or consumer thread that dies is noticed: /readyz fails, capacity counts live threads.

Dramatiq's threads catch ``Exception`` around each message; a ``BaseException``
raised by a middleware hook that runs outside that handling (``before_ack`` in a
worker thread, ``before_enqueue`` in a consumer thread putting an early message back
on the delay ladder) ends the thread.
The test loads such a middleware into real worker processes through a
``sitecustomize`` module on PYTHONPATH, which adds it to ``workers.broker`` when
Dramatiq imports ``workers``.
"""

from __future__ import annotations

import time
from pathlib import Path

import dramatiq
import pika
from prometheus_client.parser import text_string_to_metric_families

from shared.delays import DUE_AT_OPTION
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import Worker, http_get, wait_for

KILLING_MIDDLEWARE = '''
import importlib.abc
import importlib.util
import sys


class ThreadKilled(BaseException):
    """Not an Exception: Dramatiq's threads do not catch it."""


def _install(broker):
    from dramatiq.middleware import Middleware

    class KillThreads(Middleware):
        def before_ack(self, broker, message):
            if message.kwargs.get("payload") == "kill-worker-thread":
                raise ThreadKilled("worker thread")

        def before_enqueue(self, broker, message, delay):
            if message.kwargs.get("payload") == "kill-consumer":
                raise ThreadKilled("consumer thread")

    broker.add_middleware(KillThreads())


class _AfterWorkersImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "workers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _install(module.broker)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterWorkersImport())
'''


def _capacity(worker: Worker) -> float:
    status, body = http_get(worker.url("/metrics"))
    assert status == 200
    [value] = [
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "greenroom_worker_capacity"
    ]
    return value


def test_dead_worker_and_consumer_threads_fail_readiness(
    start_worker: StartWorker, producer: Producer, service_env: dict[str, str], tmp_path: Path
) -> None:
    # Given: a worker of 2 threads whose processes load a middleware that can kill threads
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLING_MIDDLEWARE)
    env = {"PYTHONPATH": f"{hooks}:{service_env.get('PYTHONPATH', '')}".rstrip(":")}
    worker = start_worker(processes=1, threads=2, env=env)
    assert _capacity(worker) == 2

    # When: a worker thread dies
    producer.send("echo", payload="kill-worker-thread")

    # Then: readiness fails naming it, capacity counts the live thread, the process still works
    wait_for(lambda: http_get(worker.url("/readyz"))[0] == 503, 10, "readiness to fail")
    assert http_get(worker.url("/readyz")) == (
        503,
        f"worker process {worker.worker_pids()[0]}: 1 of 2 worker threads died\n",
    )
    wait_for(lambda: _capacity(worker) == 1, 5, "capacity to count one thread")
    assert producer.send("echo", payload=1).result(timeout=10) == 1
    assert worker.count("Worker process lost threads: 1 of 2 worker threads died") == 1

    # When: the queue's consumer dies (putting back a message that arrived before it was due)
    early = dramatiq.Message(
        queue_name="default",
        actor_name="echo",
        args=(),
        kwargs={"payload": "kill-consumer"},
        options={DUE_AT_OPTION: int(time.time() * 1000) + 60_000},
    )
    connection = pika.BlockingConnection(pika.URLParameters(producer.settings.rabbitmq_url))
    try:
        connection.channel().basic_publish("", "default", early.encode())  # past the ladder
    finally:
        connection.close()

    # Then
    wait_for(
        lambda: "consumer of default died" in http_get(worker.url("/readyz"))[1],
        10,
        "the consumer's death",
    )
    assert http_get(worker.url("/healthz")) == (200, "ok\n")  # the process itself lives
    for line in worker.json_lines():
        assert len(line.get("exc_info", "")) < 16 * 1024
