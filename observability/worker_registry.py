"""Which worker processes of one ``greenroom worker`` are up and consuming.

Each worker process drops a marker file named after its pid once it consumes,
and removes it when it starts shutting down. The health server reads the
markers: liveness = no registered process has died; readiness = as many live
markers as expected processes, and no shutdown under way.

>>> registry = WorkerRegistry(Path("/tmp/greenroom/metrics/default-9300/workers"))
>>> registry.mark_ready(os.getpid())
>>> registry.live(), registry.dead()
([12345], [])
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerRegistry:
    """Ready markers of worker processes, one empty file per pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def mark_ready(self, pid: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / str(pid)).touch()

    def mark_stopping(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def registered(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(path.name) for path in self.directory.iterdir() if path.name.isdigit())

    def live(self) -> list[int]:
        return [pid for pid in self.registered() if pid_alive(pid)]

    def dead(self) -> list[int]:
        return [pid for pid in self.registered() if not pid_alive(pid)]
