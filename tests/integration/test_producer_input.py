"""Hostile and everyday input to the producer API and the `greenroom` CLI: every error is a
GreenroomError (one line from the CLI, exit 2 for input and refused settings, 1 for outages),
arguments and output are strict JSON, and nothing is published for bad input."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest

from shared.bench.task import BENCH_ECHO
from shared.errors import GreenroomError, InvalidParameter, InvalidTaskArguments, UnknownTask
from shared.producer import Producer
from tests.support import GREENROOM, run_cli, wait_for


def _ready(producer: Producer, queue: str = "default") -> int:
    return int(producer.broker.get_queue_message_counts(queue)[0])


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (10**5000, "an integer is too long to encode"),
        ("\ud800", "a string is not Unicode text"),
        ({"k": ["\udc00"]}, "a string is not Unicode text"),
        ({"\ud800": 1}, "a string is not Unicode text"),
        (math.nan, "NaN and Infinity are not JSON numbers"),
        ([math.inf], "NaN and Infinity are not JSON numbers"),
        ({"x": -math.inf}, "NaN and Infinity are not JSON numbers"),
    ],
    ids=["huge-int", "lone-surrogate", "nested-surrogate", "surrogate-key", "nan", "inf", "minus-inf"],
)
def test_arguments_that_are_not_strict_json_are_refused(
    producer: Producer, payload: Any, problem: str
) -> None:
    with pytest.raises(InvalidTaskArguments, match=problem):
        producer.send("echo", payload=payload)
    with pytest.raises(InvalidTaskArguments, match=problem):
        producer.send_many("echo", [{"payload": 1}, {"payload": payload}])
    assert _ready(producer) == 0


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.send_many("echo", [1, 2]), InvalidTaskArguments),
        (lambda p: p.send_many("echo", "abc"), InvalidTaskArguments),
        (lambda p: p.send_many("echo", None), InvalidTaskArguments),
        (lambda p: p.send_many("echo", {"payload": 1}), InvalidTaskArguments),
        (lambda p: p.send_many("echo", [{"payload": 1}, [("payload", 2)]]), InvalidTaskArguments),
        (lambda p: p.send(["echo"], payload=1), UnknownTask),
        (lambda p: p.send(None, payload=1), UnknownTask),
        (lambda p: p.send_many({"echo"}, [{"payload": 1}]), UnknownTask),
        (lambda p: p.send("x" * 100_000, payload=1), UnknownTask),
        (lambda p: p.result_of(["echo"], "id"), UnknownTask),
        (lambda p: p.result_of("echo", "id", timeout=math.nan), InvalidParameter),
        (lambda p: p.result_of("echo", "id", timeout=math.inf), InvalidParameter),
        (lambda p: p.result_of("echo", "id", timeout="5"), InvalidParameter),
        (lambda p: p.result_of("echo", "id", timeout=True), InvalidParameter),
        (lambda p: p.result_of("echo", "id", timeout=10**5000), InvalidParameter),
        (lambda p: p.result_of("echo", "id", timeout=None), InvalidParameter),
        (lambda p: p.result_of("echo", 5, timeout=0), InvalidParameter),
        (lambda p: p.result_of("echo", "", timeout=0), InvalidParameter),
        (lambda p: p.result_of("echo", "\ud800", timeout=0), InvalidParameter),
        (lambda p: p.result_of("echo", "x" * 1000, timeout=0), InvalidParameter),
        (lambda p: p.result_of(BENCH_ECHO.name, "id", timeout=0), InvalidParameter),  # stores no results
        (lambda p: p.send("echo", payload=1).result(timeout=math.nan), InvalidParameter),
        (lambda p: Producer("amqp://guest:guest@localhost/"), InvalidParameter),  # type: ignore[arg-type]
        (lambda p: Producer(p.settings, tracer_provider="x"), InvalidParameter),  # type: ignore[arg-type]
    ],
)
def test_every_bad_parameter_raises_a_one_line_greenroom_error(
    producer: Producer, call: Any, error: type[GreenroomError]
) -> None:
    with pytest.raises(error) as raised:
        call(producer)
    assert isinstance(raised.value, GreenroomError)
    assert "\n" not in str(raised.value)
    assert len(str(raised.value)) < 500
    assert _ready(producer) <= 1  # only the send of the handle case


def test_a_stored_result_of_nan_is_printed_as_null(
    producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    # Given: `send --wait` waiting, and a result holding NaN stored for its message (as an
    # old worker, or anything writing to Redis, could have)
    env = {**service_env, "TRACING_ENABLED": "false"}
    cli = subprocess.Popen(
        [GREENROOM, "send", "echo", "--kwargs", '{"payload": 1}', "--wait", "--timeout", "20"],
        env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: _ready(producer) == 1, 10, "the message in the queue")
    connection = pika.BlockingConnection(pika.URLParameters(producer.settings.rabbitmq_url))
    try:
        _method, _properties, body = connection.channel().basic_get("default", auto_ack=True)
    finally:
        connection.close()
    message = dramatiq.Message.decode(body)
    producer.backend.store_result(message, {"x": [1.5, math.nan, math.inf]}, 60_000)

    # When
    stdout, stderr = cli.communicate(timeout=30)

    # Then: strict JSON on stdout, one warning line on stderr
    assert cli.returncode == 0, stderr
    assert json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in the output")) == {
        "x": [1.5, None, None]
    }
    assert stderr == "greenroom: warning: NaN or Infinity in the value is printed as null\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--kwargs", '{"payload": NaN}'], "argument --kwargs: not valid JSON: NaN is not JSON"),
        (
            ["--kwargs", '{"payload": [-Infinity]}'],
            "argument --kwargs: not valid JSON: -Infinity is not JSON",
        ),
        (
            ["--kwargs", '{"payload": ' + "9" * 5000 + "}"],
            "argument --kwargs: not valid JSON: Exceeds the limit",
        ),
        (
            ["--kwargs", '{"payload": "\\ud800"}'],
            "invalid arguments for task 'echo': a string is not Unicode",
        ),
        (
            ["--kwargs", '{"payload": 1}', "--wait", "--timeout", "nan"],
            "argument --timeout: must be a finite",
        ),
        (
            ["--kwargs", '{"payload": 1}', "--wait", "--timeout", "inf"],
            "argument --timeout: must be a finite",
        ),
        (
            ["--kwargs", '{"payload": 1}', "--wait", "--timeout", "soon"],
            "argument --timeout: must be a number",
        ),
        (["--kwargs", '{"payload": 1}', "--wait", "--timeout", "0"], "argument --timeout: must be a finite"),
        (["--kwargs", "[1, 2]"], "argument --kwargs: must be a JSON object"),
        (["--kwrgs", "{}"], "unrecognized arguments: --kwrgs"),
    ],
)
def test_cli_send_refuses_bad_input_with_one_line_and_exit_2(
    producer: Producer, service_env: dict[str, str], workdir: Path, args: list[str], error: str
) -> None:
    completed = run_cli(["send", "echo", *args], {**service_env, "TRACING_ENABLED": "false"}, workdir)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.startswith(f"greenroom: error: {error}"), completed.stderr
    assert len(completed.stderr.splitlines()) == 1
    assert _ready(producer) == 0


def test_cli_with_rabbitmq_unreachable_says_why_in_one_line_and_exits_1(
    service_env: dict[str, str], workdir: Path
) -> None:
    env = {**service_env, "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/x", "TRACING_ENABLED": "false"}
    env["SEND_RETRY_TIMEOUT_SECONDS"] = "1"

    check = run_cli(["check"], env, workdir)
    send = run_cli(["send", "echo", "--kwargs", '{"payload": 1}'], env, workdir)
    dlq = run_cli(["dlq", "list", "--queue", "default"], env, workdir)

    assert check.returncode == 1
    assert check.stdout.splitlines()[0] == (
        "rabbitmq FAILED amqp://guest:***@127.0.0.1:1/x: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert check.stderr == ""
    for completed, line in [
        (send, "greenroom: could not publish message "),
        (dlq, "greenroom: could not reach RabbitMQ: ConnectionRefusedError"),
    ]:
        assert completed.returncode == 1
        assert completed.stderr.startswith(line), completed.stderr
        assert len(completed.stderr.splitlines()) == 1
        assert "Connection refused" in completed.stderr


def test_cli_refused_by_rabbitmq_exits_2_with_one_line_like_the_worker(
    service_env: dict[str, str], workdir: Path, rabbitmq_url: str
) -> None:
    env = {**service_env, "RABBITMQ_URL": rabbitmq_url.replace("guest:guest@", "guest:wrong-secret@")}
    env["TRACING_ENABLED"] = "false"
    refused = "RabbitMQ refused the login: check the user name and password"

    started = time.monotonic()
    results = [
        run_cli(["send", "echo", "--kwargs", '{"payload": 1}'], env, workdir),
        run_cli(["send", "echo", "--kwargs", '{"payload": 1}', "--wait"], env, workdir),
        run_cli(["dlq", "replay", "--all"], env, workdir),
        run_cli(["dlq", "list"], env, workdir),
    ]
    check = run_cli(["check"], env, workdir)

    assert time.monotonic() - started < 30  # nothing retried for SEND_RETRY_TIMEOUT_SECONDS
    for completed in results:
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.startswith("greenroom: error: "), completed.stderr
        assert refused in completed.stderr
        assert len(completed.stderr.splitlines()) == 1, completed.stderr
    assert check.returncode == 2
    assert check.stdout.splitlines()[0].startswith("rabbitmq REFUSED RABBITMQ_URL (amqp://guest:***@")
    assert "wrong-secret" not in "".join(c.stdout + c.stderr for c in [*results, check])
