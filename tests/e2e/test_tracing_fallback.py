"""A real worker whose OpenTelemetry SDK is outside the tested release series still traces
every task, through the library's exporter and SDK spans, and says so: one ERROR line per
component and greenroom_degraded on its metrics endpoint."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from shared.bench.otlp_receiver import OtlpReceiver
from shared.producer import Producer
from shared.settings import Settings
from tests.e2e.conftest import StartWorker
from tests.support import wait_for

TASKS = 5

#: Makes every process started with it on PYTHONPATH see opentelemetry-sdk 1.46.0.
UPGRADED_SDK = """\
import importlib.metadata

_installed = importlib.metadata.version
importlib.metadata.version = lambda name: "1.46.0" if name == "opentelemetry-sdk" else _installed(name)
"""


def test_a_worker_on_an_untested_sdk_traces_through_the_library_and_says_so(
    start_worker: StartWorker, settings: Settings, tmp_path: Path
) -> None:
    # Given: a worker that finds opentelemetry-sdk 1.46.0 installed
    (tmp_path / "sitecustomize.py").write_text(UPGRADED_SDK)
    with OtlpReceiver.start("http/protobuf") as receiver:
        worker = start_worker(
            processes=1,
            threads=2,
            env={
                "PYTHONPATH": str(tmp_path),
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        producer = Producer(settings)

        # When: tasks are sent to it
        handles = producer.send_many("echo", [{"payload": n} for n in range(TASKS)])
        assert [h.result(timeout=20) for h in handles] == list(range(TASKS))
        producer.close()

        # Then: every task's consumer span arrives
        def consumer_spans() -> set[str]:
            return {s.attributes["messaging.message.id"] for s in receiver.spans() if s.kind == "CONSUMER"}

        wait_for(lambda: consumer_spans() >= {h.message_id for h in handles}, 20, "the consumer spans")

    # And: the worker said, once per component, that it runs on the library's public path
    output = worker.output()
    for component in ("OTLP http/protobuf span export", "consumer spans"):
        lines = [line for line in output.splitlines() if f"{component}: fast path unavailable" in line]
        assert len(lines) == 1, output
        assert "opentelemetry-sdk 1.46.0 is installed; this code was written against 1.45.2" in lines[0]
        assert '"level": "ERROR", "logger": "greenroom.degraded"' in lines[0]
    metrics = urllib.request.urlopen(worker.url("/metrics"), timeout=10).read().decode()
    for component in ("OTLP http/protobuf span export", "consumer spans"):
        assert f'greenroom_degraded{{component="{component}"}} 1.0' in metrics, metrics
