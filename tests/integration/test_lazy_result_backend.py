"""Importing the `greenroom` command's modules and the workers loads no redis-py (0.18 s and 7 MiB),
so commands that need no Redis start light; a worker's result backend is built when a task first
stores a result. (A booted worker imports redis-py for cancellation, shared.runtime.cancellation.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
import dramatiq
from dramatiq.results import Results
import shared.cli  # what `greenroom worker` runs
import workers

loaded_at_start = "redis" in sys.modules
[results] = [m for m in workers.broker.middleware if isinstance(m, Results)]
message = dramatiq.Message("default", "echo", (), {"payload": 1}, {})
results.backend.store_result(message, {"stored": True}, 60_000)
print(loaded_at_start, "redis" in sys.modules, results.backend.get_result(message))
"""


def test_redis_is_imported_when_a_result_is_first_stored(service_env: dict[str, str], workdir: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=service_env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split("\n")[-2] == "False True {'stored': True}"
