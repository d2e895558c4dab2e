"""The Procfile's process types run side by side under honcho, each worker type consuming only its
queue, two beats sending each heartbeat once."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

from shared.producer import Producer
from tests.support import REPO, Process, forget_beat_state, wait_for


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


def _heartbeat_ids(honcho: Process) -> Counter[str]:
    """How often each heartbeat tick's message id was processed, from the task log lines."""
    ids: Counter[str] = Counter()
    for line in honcho.snapshot():
        _prefix, sep, rest = line.partition(" | ")
        if sep and rest.startswith("{"):
            event = json.loads(rest)
            if event.get("logger") == "greenroom.task" and event.get("message_id", "").startswith(
                "beat:heartbeat:"
            ):
                ids[event["message_id"]] += 1
    return ids


def test_process_types_scale_and_consume_only_their_queue(
    producer: Producer, service_env: dict[str, str], workdir: Path, redis_url: str
) -> None:
    # Given: every Procfile process type, the reports type and the beat scaled to 2
    assert _process_types() == ["default", "reports", "beat"]
    forget_beat_state(redis_url)
    (workdir / "empty.env").write_text("")
    env = {**service_env, "WORKER_PROCESSES": "1", "BEAT_HEARTBEAT_SECONDS": "1"}
    procfile = ["-f", str(REPO / "Procfile"), "-d", str(workdir), "-e", "empty.env"]
    honcho = Process(["honcho", *procfile, "start", "-c", "reports=2,beat=2"], env, workdir)
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

        # And: of the two beats, one leads: each heartbeat tick is sent, and run, once
        wait_for(lambda: len(_heartbeat_ids(honcho)) >= 3, 30, "3 heartbeat tasks run")
        heartbeats = _heartbeat_ids(honcho)
        assert set(heartbeats.values()) == {1}, heartbeats

        # When: honcho is stopped, it stops every process type gracefully
        honcho.signal(signal.SIGTERM)
        assert honcho.wait(timeout=20) == 128 + signal.SIGTERM, honcho.output()  # honcho's own convention
        assert honcho.count("stopped (rc=0)") == 5, honcho.output()
        worker_stops = [line for line in honcho.snapshot() if "greenroom worker stopped" in line]
        assert len(worker_stops) == 3 and all('"exit_code": 0' in line for line in worker_stops)
    finally:
        honcho.stop()
        forget_beat_state(redis_url)
