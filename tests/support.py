"""Helpers for tests that run real services and real `greenroom worker` processes."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika

from shared.settings import Settings

if TYPE_CHECKING:
    from shared.bench.otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parent.parent
GREENROOM = str(Path(sys.executable).with_name("greenroom"))

READY_LINE = "Worker process is ready for action."


#: Ports handed to servers under test: below Linux's ephemeral range (32768-60999), from which
#: every outgoing connection takes its local port, so no client socket can take one between
#: free_port() and the server's bind.
_SERVER_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the ephemeral range."""
    for port in random.sample(_SERVER_PORTS, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port among 200 tried in {_SERVER_PORTS}")


def stop_rabbitmq_for(seconds: float) -> None:
    """Stop the machine's RabbitMQ application for ``seconds``, then start it again and wait until
    it is up (also when interrupted): every client connection drops, durable queues survive."""
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=60)
    try:
        time.sleep(seconds)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)


def take_all(rabbitmq_url: str, queue: str) -> list[bytes]:
    """Every message body in ``queue``, in order, removing them."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def delete_queues(rabbitmq_url: str, queue: str) -> None:
    """Delete ``queue`` and its delay and dead-letter queues (``.DQ``, ``.XQ``)."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            connection.channel().queue_delete(name)
    finally:
        connection.close()


def http_get(url: str, accept: str = "*/*") -> tuple[int, str]:
    """(status, body) of a GET; connection errors raise."""
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def http_status(url: str) -> int:
    """The status of a GET, or 0 if nothing answers."""
    try:
        return http_get(url)[0]
    except OSError:
        return 0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process whose stdout lines are collected as they arrive."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # so teardown can kill the whole tree
        )
        self.stderr_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr_lines), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.snapshot())

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """Make sure the process and its children are gone (test teardown)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        _kill_group(self.popen.pid)
        self.popen.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails on the first line that is not)."""
        parsed = []
        for number, line in enumerate(self.snapshot(), 1):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise AssertionError(f"stdout line {number} is not JSON: {line!r}") from error
        return parsed

    def output(self) -> str:
        return "\n".join([*self.snapshot(), "--- stderr ---", *self.stderr_lines])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class Worker(Process):
    """A real `greenroom worker` process."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        *,
        processes: int = 2,
        threads: int = 4,
        queues: Sequence[str] = (),
    ) -> None:
        argv = [GREENROOM, "worker", "--processes", str(processes), "--threads", str(threads)]
        if queues:
            argv += ["--queues", *queues]
        self.processes = processes
        self.metrics_port = int(env.get("METRICS_PORT") or free_port())
        super().__init__(argv, {**env, "METRICS_PORT": str(self.metrics_port)}, cwd)

    def worker_pids(self) -> list[int]:
        """Pids of the Dramatiq worker processes (not the master, not the metrics server)."""
        directory = Path(self.env["METRICS_DIR"])
        return sorted(
            int(p.name) for p in directory.glob(f"*-{self.metrics_port}/workers/*") if p.name.isdigit()
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 30) -> Worker:
        wait_for(
            lambda: self.count(READY_LINE) >= self.processes or self.popen.poll() is not None,
            timeout,
            f"{self.processes} worker processes to be ready",
        )
        assert self.popen.poll() is None, f"worker exited early:\n{self.output()}"
        try:
            wait_for(lambda: http_status(self.url("/readyz")) == 200, timeout, "/readyz to answer 200")
        except AssertionError as error:  # say what the server answered and what the worker logged
            answer = http_status(self.url("/readyz"))
            raise AssertionError(f"{error} (last answer: {answer or 'none'})\n{self.output()}") from None
        return self

    def task_events(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line.get("logger") == "greenroom.task"]

    def wait_for_task_events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The per-task log lines, once at least ``count`` of them have arrived.

        A result reaches Redis a moment before the worker's log line for it.
        """
        wait_for(lambda: len(self.task_events()) >= count, timeout, f"{count} task log lines")
        return self.task_events()


class Beat(Process):
    """A real `greenroom beat` process."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *, module: str | None = None) -> None:
        self.metrics_port = int(env.get("METRICS_PORT") or free_port())
        argv = [GREENROOM, "beat", *([module] if module else [])]
        super().__init__(argv, {**env, "METRICS_PORT": str(self.metrics_port)}, cwd)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 30) -> Beat:
        wait_for(lambda: http_status(self.url("/readyz")) == 200 or self.popen.poll() is not None, timeout,
                 "the beat to be ready")  # fmt: skip
        assert self.popen.poll() is None, f"beat exited early:\n{self.output()}"
        return self

    def beat_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line.get("logger") == "greenroom.beat"]

    def ticks_sent(self) -> list[dict[str, Any]]:
        """The ``tick sent`` lines so far."""
        return [line for line in self.beat_lines() if line["message"] == "tick sent"]

    def leads(self) -> bool:
        """Whether /metrics says this process holds the lease."""
        status, body = http_get(self.url("/metrics"))
        return status == 200 and "\ngreenroom_beat_leader 1.0" in body


def forget_beat_state(redis_url: str) -> None:
    """Delete what greenroom beat keeps in Redis (its lease, cursors and claims), so that the
    beats of a test start afresh instead of catching up an earlier test's ticks."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter("greenroom-beat:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def metric_families() -> dict[str, str]:
    """Every metric family the production packages create: name -> Counter, Gauge, Histogram ...

    Read from the source: the first argument of each metric constructor, a string or a
    module-level constant holding one.
    """
    families: dict[str, str] = {}
    for package in ("shared", "workers", "observability"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            constants = {
                target.id: node.value.value
                for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                for target in node.targets
                if isinstance(target, ast.Name) and isinstance(node.value.value, str)
            }
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                kind = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if kind not in ("Counter", "Gauge", "Histogram", "Summary") and not kind.endswith(
                    "MetricFamily"
                ):
                    continue
                first = node.args[0]
                name = (
                    first.value
                    if isinstance(first, ast.Constant)
                    else constants.get(getattr(first, "id", ""))
                )
                if isinstance(name, str) and name.startswith("greenroom_"):
                    families[name] = kind
    return families


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `greenroom` command to completion."""
    return subprocess.run(
        [GREENROOM, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


#: A disk free limit no machine here meets (1 PB): setting it raises RabbitMQ's disk alarm.
_ALARMING_DISK_FREE_LIMIT = str(10**15)


@contextlib.contextmanager
def rabbitmq_disk_alarm(max_seconds: float = 30) -> Iterator[None]:
    """Hold a disk alarm on the machine's RabbitMQ for the ``with`` block: every connection that
    publishes is blocked (consumers go on). Afterwards the node's disk free limit is set back to the
    value it had and the alarm is seen cleared, also when the block raises or is interrupted (Ctrl-C
    is held back until then). Keep the block short: other tests on the node are blocked too.
    ``max_seconds`` bounds each wait for the alarm to appear or clear."""
    limit = _rabbitmqctl_eval("rabbit_disk_monitor:get_disk_free_limit().")
    if not limit.isdigit() or limit == _ALARMING_DISK_FREE_LIMIT:
        raise RuntimeError(f"unexpected disk free limit {limit!r}: is an earlier alarm still raised?")
    try:
        _rabbitmqctl("set_disk_free_limit", _ALARMING_DISK_FREE_LIMIT)
        wait_for(_disk_alarm_raised, max_seconds, "RabbitMQ's disk alarm", interval=0.2)
        yield
    finally:
        with _interrupts_held_back():
            _rabbitmqctl("set_disk_free_limit", limit)
            wait_for(lambda: not _disk_alarm_raised(), max_seconds, "the disk alarm to clear", interval=0.2)


def _disk_alarm_raised() -> bool:
    return "resource_limit,disk" in _rabbitmqctl_eval("rabbit_alarm:get_alarms().")


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def _rabbitmqctl_eval(expression: str) -> str:
    return _rabbitmqctl("eval", expression)


@contextlib.contextmanager
def _interrupts_held_back() -> Iterator[None]:
    """SIGINT (Ctrl-C) arriving in the block is delivered after it (on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def greenroom_env(
    rabbitmq_url: str, redis_url: str, otlp_receiver: OtlpReceiver, metrics_dir: Path
) -> dict[str, str]:
    """Environment for greenroom subprocesses: the test services, nothing from the caller's config
    (tests/conftest.py's ``service_env``; for fixtures of any scope, a module's worker)."""
    env = {key: value for key, value in os.environ.items() if not _is_greenroom_setting(key)}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # greenroom, honcho
        RABBITMQ_URL=rabbitmq_url,
        REDIS_URL=redis_url,
        LOG_LEVEL="INFO",
        WORKER_SHUTDOWN_TIMEOUT_SECONDS="10",
        TASK_MIN_BACKOFF_SECONDS="0.1",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=otlp_receiver.protocol,
        METRICS_DIR=str(metrics_dir),
    )
    return env


def _is_greenroom_setting(key: str) -> bool:
    return key in Settings.model_fields or key.startswith(("OTEL_", "PROMETHEUS_"))
