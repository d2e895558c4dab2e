"""`greenroom beat` replicas send every tick once through kills, pauses, restarts and a Redis outage.

Real processes: two (then three) `greenroom beat` processes with a 1-second
heartbeat and a real worker, on the session's RabbitMQ vhost and Redis database
(the Redis-outage test on a Redis server of its own). Evidence is counted
afterwards from three sources: the beats' ``tick sent`` and ``missed`` lines, the
results the worker stored, and the worker's per-task lines.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.bench.otlp_receiver import OtlpReceiver
from shared.producer import Producer
from shared.settings import load_settings
from tests.e2e.conftest import StartWorker
from tests.support import Beat, Worker, forget_beat_state, free_port, wait_for

#: Beat settings of these tests: a tick a second, a 2-second lease, a 4-second catch-up window.
BEAT_ENV = {"BEAT_HEARTBEAT_SECONDS": "1", "BEAT_LEASE_SECONDS": "2", "BEAT_CATCHUP_SECONDS": "4"}


@pytest.fixture
def start_beat(service_env: dict[str, str], workdir: Path) -> Iterator[Callable[..., Beat]]:
    """Start `greenroom beat` processes (ready: /readyz answers 200); stop them afterwards."""
    started: list[Beat] = []
    forget_beat_state(service_env["REDIS_URL"])

    def start(env: dict[str, str] | None = None) -> Beat:
        beat = Beat({**service_env, **BEAT_ENV, **(env or {})}, workdir)
        started.append(beat)
        return beat.wait_ready()

    yield start
    for beat in started:
        with_signal(beat, signal.SIGCONT)
        beat.stop()


def test_every_tick_is_sent_once_while_leaders_are_killed_paused_and_restarted(
    start_beat: Callable[..., Beat], start_worker: StartWorker, producer: Producer
) -> None:
    # Given two beats and a worker
    worker = start_worker(processes=1, threads=4, queues=["default"])
    first, second = start_beat(), start_beat()
    beats = [first, second]
    wait_for_ticks(beats, 4)

    # When the leader is killed, the other takes over
    leader = the_leader(beats)
    follower = second if leader is first else first
    leader.signal(signal.SIGKILL)
    leader.wait(timeout=10)
    wait_for(follower.leads, 10, "the follower to take over")
    wait_for_ticks([follower], 4)

    # ... a new process joins, and the leader is paused past its lease, then resumed
    restarted = start_beat()
    beats.append(restarted)
    wait_for_ticks(beats, 2)
    follower.signal(signal.SIGSTOP)
    wait_for(restarted.leads, 10, "the restarted beat to take over from the paused one")
    wait_for_ticks([restarted], 3)
    follower.signal(signal.SIGCONT)
    wait_for_ticks(beats, 3)

    # ... and both are paused longer than the catch-up window (ticks go missing), then resumed
    for beat in (follower, restarted):
        beat.signal(signal.SIGSTOP)
    time.sleep(7)
    for beat in (follower, restarted):
        beat.signal(signal.SIGCONT)
    wait_for_ticks(beats, 4)
    for beat in (follower, restarted):
        beat.signal(signal.SIGTERM)
    assert [beat.wait(timeout=30) for beat in (follower, restarted)] == [0, 0]

    # Then every scheduled second from the first tick to the last was sent once or counted missed
    sent, missed = ticks_of(beats), missed_of(beats)
    assert_each_tick_once(sent, missed, at_least=20)
    assert missed, "the long pause should have left ticks out of the catch-up window"
    # ... the ticks reported missed were older than the catch-up window when they were skipped
    assert all(reported - tick > timedelta(seconds=4) for tick, reported in missed.items())
    # ... and every sent tick ran once on the worker and stored its scheduled time as its result
    assert_ran_once(worker, sent, producer)


def test_ticks_are_caught_up_once_after_redis_is_down_for_a_few_seconds(
    start_beat: Callable[..., Beat], start_worker: StartWorker, producer: Producer, tmp_path: Path
) -> None:
    # Given two beats and a worker on a Redis server of the test's own
    with own_redis(tmp_path) as (server, url):
        env = {"REDIS_URL": url, "BEAT_CATCHUP_SECONDS": "30"}
        worker = start_worker(processes=1, threads=4, queues=["default"], env={"REDIS_URL": url})
        beats = [start_beat(env), start_beat(env)]
        wait_for_ticks(beats, 3)

        # When Redis is down for 4 seconds
        server.stop()
        time.sleep(4)
        server.start()
        wait_for_ticks(beats, 6)
        for beat in beats:
            beat.signal(signal.SIGTERM)
        assert [beat.wait(timeout=30) for beat in beats] == [0, 0]

        # Then the ticks of the outage were sent once each, late, and none is missing
        sent = ticks_of(beats)
        assert_each_tick_once(sent, {}, at_least=8)
        late = [line for line in sent.values() if line["lag_seconds"] > 1.5]
        assert late, "the ticks due while Redis was down should have been caught up late"
        results = Producer(load_settings(RABBITMQ_URL=producer.settings.rabbitmq_url, REDIS_URL=url))
        try:
            assert_ran_once(worker, sent, results)
        finally:
            results.close()


def test_sigterm_hands_the_lease_over_at_once(start_beat: Callable[..., Beat]) -> None:
    # Given two beats with a 30-second lease (a take-over on expiry would take 30 s)
    beats = [start_beat({"BEAT_LEASE_SECONDS": "30", "BEAT_CATCHUP_SECONDS": "60"}) for _ in range(2)]
    leader = the_leader(beats)
    follower = next(beat for beat in beats if beat is not leader)

    # When the leader gets SIGTERM
    leader.signal(signal.SIGTERM)

    # Then it exits 0, and the other leads and sends ticks well before the lease could expire
    assert leader.wait(timeout=30) == 0
    wait_for(follower.leads, 10, "the follower to lead after the leader released the lease")
    wait_for_ticks([follower], 2, timeout=10)


def test_each_tick_is_a_producer_span_whose_trace_continues_in_the_worker(
    start_beat: Callable[..., Beat], start_worker: StartWorker, otlp_receiver: OtlpReceiver
) -> None:
    # Given a beat and a worker exporting their spans
    start_worker(processes=1, threads=2, queues=["default"])
    beat = start_beat()

    # When it has sent three ticks and stopped (flushing its spans)
    wait_for_ticks([beat], 3)
    beat.signal(signal.SIGTERM)
    assert beat.wait(timeout=30) == 0
    ticks = {line["message_id"]: line["scheduled_at"] for line in beat.ticks_sent()}
    wait_for(lambda: len(otlp_receiver.consumer_spans(ticks)) == len(ticks), 20, "the ticks' consumer spans")

    # Then each tick's PRODUCER span (service greenroom-beat) names the schedule, and the worker's
    # CONSUMER span is its child, in the same trace, with the same attributes
    producers = {
        s.attributes.get("messaging.message.id"): s for s in otlp_receiver.spans() if s.kind == "PRODUCER"
    }
    for message_id, scheduled_at in ticks.items():
        producer, (consumer,) = producers[message_id], otlp_receiver.consumer_spans([message_id])[message_id]
        assert producer.name == "send default"
        assert producer.resource["service.name"] == "greenroom-beat"
        for span in (producer, consumer):
            assert span.attributes["greenroom.schedule.name"] == "heartbeat"
            assert span.attributes["greenroom.schedule.scheduled_at"] == scheduled_at
        assert (consumer.trace_id, consumer.parent_span_id) == (producer.trace_id, producer.span_id)


# Helpers -------------------------------------------------------------------------------


def with_signal(beat: Beat, signum: int) -> None:
    if beat.popen.poll() is None:
        beat.signal(signum)


def wait_for_ticks(beats: Sequence[Beat], count: int, timeout: float = 20) -> None:
    """Wait until ``count`` more ticks have been sent by ``beats`` together."""
    target = sum(len(beat.ticks_sent()) for beat in beats) + count
    wait_for(lambda: sum(len(beat.ticks_sent()) for beat in beats) >= target, timeout, f"{count} ticks")


def the_leader(beats: Sequence[Beat]) -> Beat:
    wait_for(lambda: sum(beat.leads() for beat in beats) == 1, 10, "exactly one beat to lead")
    return next(beat for beat in beats if beat.leads())


def ticks_of(beats: Sequence[Beat]) -> dict[datetime, dict[str, Any]]:
    """Every ``tick sent`` line of the heartbeat by scheduled time; a tick sent twice fails."""
    lines = [line for beat in beats for line in beat.ticks_sent() if line["schedule"] == "heartbeat"]
    counts = collections.Counter(line["scheduled_at"] for line in lines)
    assert not [at for at, n in counts.items() if n > 1], f"ticks sent twice: {counts.most_common(3)}"
    return {parse(line["scheduled_at"]): line for line in lines}


def missed_of(beats: Sequence[Beat]) -> dict[datetime, datetime]:
    """Every tick a beat counted as missed, with when it said so."""
    missed: dict[datetime, datetime] = {}
    for beat in beats:
        for line in beat.beat_lines():
            if "missed" not in line or line.get("schedule") != "heartbeat":
                continue
            first, last = parse(line["first_missed"]), parse(line["last_missed"])
            ticks = [first + timedelta(seconds=n) for n in range(int((last - first).total_seconds()) + 1)]
            assert len(ticks) == line["missed"], line
            reported = datetime.fromisoformat(line["timestamp"])
            for tick in ticks:
                assert tick not in missed, f"tick {tick} counted missed twice"
                missed[tick] = reported
    return missed


def assert_each_tick_once(sent: dict[datetime, Any], missed: dict[datetime, Any], *, at_least: int) -> None:
    """Every second from the first tick to the last is sent or missed, never both, never neither."""
    assert not sent.keys() & missed.keys(), f"sent and missed: {sorted(sent.keys() & missed.keys())[:3]}"
    ticks = sent.keys() | missed.keys()
    first, last = min(ticks), max(ticks)
    expected = {first + timedelta(seconds=n) for n in range(int((last - first).total_seconds()) + 1)}
    assert not expected - ticks, f"ticks neither sent nor missed: {sorted(expected - ticks)[:5]}"
    assert len(expected) >= at_least, f"only {len(expected)} ticks from {first} to {last}"


def assert_ran_once(worker: Worker, sent: dict[datetime, dict[str, Any]], producer: Producer) -> None:
    """Each sent tick's message ran once (the worker's task lines) and stored its scheduled time."""
    ids = {line["message_id"]: at for at, line in sent.items()}

    def runs() -> collections.Counter[str]:
        return collections.Counter(
            e["message_id"]
            for e in worker.task_events()
            if e.get("message_id") in ids and e["event"] == "succeeded"
        )

    wait_for(lambda: len(runs()) == len(ids), 20, "every sent tick to run")
    assert max(runs().values()) == 1, f"ticks run twice: {runs().most_common(3)}"
    for message_id, at in ids.items():
        assert producer.result_of("echo", message_id, timeout=10) == at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class RedisServer:
    """A redis-server of the test's own whose data survives a restart (append-only file)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: _pings(client), 10, "the test's Redis server")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # redis-server flushes its append-only file
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def own_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A Redis server of the test's own (and its URL), stopped afterwards."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    try:
        yield server, f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()
