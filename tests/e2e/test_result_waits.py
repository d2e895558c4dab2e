"""Waiting for a result longer than Redis' socket timeout (5 s), from the API and from the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import GREENROOM


def test_a_task_of_8_seconds_is_awaited_with_a_20_second_timeout(
    start_worker: StartWorker, producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    # Given: a worker, and two tasks that finish after 8 s (longer than Redis' 5 s socket timeout)
    start_worker(processes=1, threads=2)
    kwargs = {"payload": {"slow": True}, "delay_ms": 8000}
    cli = subprocess.Popen(
        [GREENROOM, "send", "echo", "--kwargs", json.dumps(kwargs), "--wait", "--timeout", "20"],
        env={**service_env, "TRACING_ENABLED": "false"},
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    handle = producer.send("echo", **kwargs)

    # When: both wait with a 20 s timeout
    result = handle.result(timeout=20)
    waited = time.monotonic() - started
    stdout, stderr = cli.communicate(timeout=40)

    # Then: both get the result (the wait outlived the socket timeout)
    assert result == {"slow": True}
    assert waited >= 7.5
    assert cli.returncode == 0, stderr
    assert json.loads(stdout) == {"slow": True}
