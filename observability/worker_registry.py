"""Which worker processes of one ``greenroom worker`` are up and consuming.

Each worker process keeps a marker file named after its pid: ``ready`` once
it consumes, ``stopping`` from the start of its shutdown, removed once it has
shut down. The health server reads the markers: liveness = no registered
process has died; readiness = as many ``ready`` processes as expected, and no
shutdown under way.

>>> registry = WorkerRegistry(Path("/tmp/greenroom/metrics/default-9300/workers"))
>>> registry.mark(os.getpid(), READY)
>>> registry.ready(), registry.live(), registry.dead()
([12345], [12345], [])
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


READY = "ready"
STOPPING = "stopping"


class WorkerRegistry:
    """State markers of worker processes, one small file per pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def mark(self, pid: int, state: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / str(pid)).write_text(state)

    def remove(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def states(self) -> dict[int, str]:
        if not self.directory.is_dir():
            return {}
        found = {}
        for path in self.directory.iterdir():
            if path.name.isdigit():
                with contextlib.suppress(FileNotFoundError):
                    found[int(path.name)] = path.read_text()
        return found

    def ready(self) -> list[int]:
        return sorted(pid for pid, state in self.states().items() if state == READY and pid_alive(pid))

    def live(self) -> list[int]:
        return sorted(pid for pid in self.states() if pid_alive(pid))

    def dead(self) -> list[int]:
        return sorted(pid for pid in self.states() if not pid_alive(pid))
