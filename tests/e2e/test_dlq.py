"""`greenroom dlq list / replay / purge` end to end, with real dead letters."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import TaskFailed
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import run_cli, wait_for


def _dead(producer: Producer) -> int:
    return int(producer.broker.get_queue_message_counts("default")[2])


def test_list_replay_and_purge_dead_letters(
    start_worker: StartWorker, producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    # Given: three dead letters
    worker = start_worker(processes=1, threads=2)
    handles = [producer.send("fail", reason=f"boom {n}") for n in range(3)]
    for handle in handles:
        with pytest.raises(TaskFailed):
            handle.result(timeout=10)
    wait_for(lambda: _dead(producer) == 3, 10, "3 dead letters")

    # When: listed, twice
    for _ in range(2):
        listed = run_cli(["dlq", "list", "--queue", "default"], service_env, workdir)
        assert listed.returncode == 0, listed.stderr
        assert "default.XQ: 3 dead letter(s)" in listed.stdout
    # Then: listing consumed nothing, and shows ids, actor and the error
    assert _dead(producer) == 3
    for handle in handles:
        assert handle.message_id in listed.stdout
    assert "DiagnosticFailure: boom 0" in listed.stdout

    # When: one is replayed with fresh retries
    replayed = handles[0].message_id
    completed = run_cli(
        ["dlq", "replay", "--queue", "default", "--id", replayed, "--fresh-retries"], service_env, workdir
    )
    assert completed.stdout.strip() == "default.XQ: replayed 1 to default"

    # Then: it runs again, in its original trace, and dies again
    runs = lambda: [e for e in worker.task_events() if e["message_id"] == replayed]  # noqa: E731
    wait_for(lambda: len(runs()) == 2, 10, "the replayed task to run")
    first, second = runs()
    assert second["retries"] == 0
    assert second["trace_id"] == first["trace_id"]
    wait_for(lambda: _dead(producer) == 3, 10, "the replayed task back among the dead letters")

    # When: purge without confirmation (no terminal answers), then with --yes
    refused = run_cli(["dlq", "purge", "--queue", "default"], service_env, workdir)
    assert refused.returncode == 1
    assert "default.XQ: left as it was" in refused.stderr
    assert _dead(producer) == 3
    purged = run_cli(["dlq", "purge", "--queue", "default", "--yes"], service_env, workdir)
    assert "default.XQ: purged 3" in purged.stdout
    assert _dead(producer) == 0
