"""The Procfile's process types run side by side under honcho, each consuming only its queue."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from shared.producer import Producer
from tests.support import REPO, Process, wait_for


def _process_types() -> list[str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[0] for line in lines if line.strip() and not line.startswith("#")]


def _task_queues_by_process(honcho: Process) -> dict[str, set[str]]:
    """{"default.1": {"default"}, ...} from honcho's prefixed output lines."""
    seen: dict[str, set[str]] = {}
    for line in honcho.snapshot():
        prefix, sep, rest = line.partition(" | ")
        if not sep or not rest.startswith("{"):
            continue
        event = json.loads(rest)
        if event.get("logger") == "greenroom.task":
            seen.setdefault(prefix.split()[-1], set()).add(event["queue"])
    return seen


def test_process_types_scale_and_consume_only_their_queue(
    producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    # Given: every Procfile process type, the reports type scaled to 2
    assert _process_types() == ["default", "reports"]
    (workdir / "empty.env").write_text("")
    env = {**service_env, "WORKER_PROCESSES": "1"}
    procfile = ["-f", str(REPO / "Procfile"), "-d", str(workdir), "-e", "empty.env"]
    honcho = Process(["honcho", *procfile, "start", "-c", "reports=2"], env, workdir)
    try:
        wait_for(lambda: honcho.count("Worker process is ready for action.") == 3, 30, "3 worker processes")

        # When
        echoes = producer.send_many("echo", [{"payload": n} for n in range(20)])
        report_kwargs = [{"report_id": f"r{n}", "rows": 2000} for n in range(6)]
        reports = producer.send_many("reports.build", report_kwargs)

        # Then
        assert [h.result(timeout=30) for h in echoes] == list(range(20))
        assert all(h.result(timeout=30)["rows"] == 2000 for h in reports)
        # Workers write task lines in batches (at least every 0.1 s): wait for both types' lines.
        wait_for(
            lambda: (
                "default.1" in (seen := _task_queues_by_process(honcho))
                and any(p.startswith("reports") for p in seen)
            ),
            10,
            "task log lines of both process types",
        )
        by_process = _task_queues_by_process(honcho)
        assert by_process.get("default.1") == {"default"}
        assert set(by_process) <= {"default.1", "reports.1", "reports.2"}
        assert all(queues == {"reports"} for name, queues in by_process.items() if name.startswith("reports"))

        # When: honcho is stopped, it stops every process type gracefully
        honcho.signal(signal.SIGTERM)
        assert honcho.wait(timeout=20) == 128 + signal.SIGTERM, honcho.output()  # honcho's own convention
        assert honcho.count("stopped (rc=0)") == 3, honcho.output()
        assert honcho.count('"exit_code": 0') == 3
    finally:
        honcho.stop()
