"""Which worker processes of one ``greenroom worker`` are up and consuming.

Each worker process keeps a marker file named after its pid: ``ready`` once
it consumes, ``degraded`` (with the reason on the next line) once one of its
worker or consumer threads has died, ``stopping`` from the start of its
shutdown, removed once it has shut down. The health server reads the markers:
liveness = no registered process has died; readiness = as many ``ready``
processes as expected, none degraded, and no shutdown under way.

For example (12345 standing for the process's pid)::

    registry = WorkerRegistry(Path("/tmp/greenroom/metrics/default-9300/workers"))
    registry.mark(os.getpid(), READY)
    registry.ready(), registry.live(), registry.dead()   # ([12345], [12345], [])
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
DEGRADED = "degraded"


def degraded(reason: str) -> str:
    """The marker of a process that lost threads, with the reason."""
    return f"{DEGRADED}\n{reason}"


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

    def stopping(self) -> list[int]:
        return sorted(pid for pid, state in self.states().items() if state == STOPPING)

    def problems(self) -> dict[int, str]:
        """The reasons of live processes that marked themselves degraded, by pid."""
        return {
            pid: state.partition("\n")[2]
            for pid, state in sorted(self.states().items())
            if state.startswith(DEGRADED) and pid_alive(pid)
        }

    def live(self) -> list[int]:
        return sorted(pid for pid in self.states() if pid_alive(pid))

    def dead(self) -> list[int]:
        return sorted(pid for pid in self.states() if not pid_alive(pid))
