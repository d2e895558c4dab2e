"""`greenroom worker` prints one line of its own once /readyz answers 200: its queues,
processes x threads and the metrics URL."""

from __future__ import annotations

from pathlib import Path

from tests.support import Worker, http_status, wait_for

READY_MESSAGE = "greenroom worker ready: "


def test_the_ready_line_comes_when_readyz_turns_200_and_names_queues_processes_threads_and_metrics(
    service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    # Given
    worker = Worker(service_env, workdir, processes=2, threads=3, queues=["default,reports"])
    try:
        # When: /readyz is polled from the start, noting each time whether the line was out before
        answers: list[tuple[bool, int]] = []

        def ready_line_printed() -> bool:
            printed = worker.count(READY_MESSAGE) > 0
            answers.append((printed, http_status(worker.url("/readyz"))))
            return printed

        wait_for(ready_line_printed, 30, "the ready line")

        # Then: no answer but 200 once the line was out, and answers before it that were not 200
        assert all(status == 200 for printed, status in answers if printed), answers
        assert any(status != 200 for printed, status in answers if not printed), answers
        [line] = [line for line in worker.json_lines() if line["message"].startswith(READY_MESSAGE)]
        metrics = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        assert line["logger"] == "greenroom.worker"
        assert line["level"] == "INFO"
        assert line["message"] == (
            f"greenroom worker ready: queues default, reports; 2 processes x 3 threads; metrics {metrics}"
        )
        assert line["queues"] == ["default", "reports"]
        assert (line["processes"], line["threads"], line["metrics"]) == (2, 3, metrics)
        worker.signal()
        assert worker.wait(timeout=30) == 0
        assert [line["message"] for line in worker.json_lines()].count(line["message"]) == 1
    finally:
        worker.stop()
