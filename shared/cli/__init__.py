"""The ``greenroom`` command.

Exit codes: 0 success, 1 the operation failed (a service is down, a task
failed, a result timed out, an id matched no dead letter, a purge was not
confirmed), 2 bad usage or bad settings, RabbitMQ or Redis refusing them
included (one line on stderr). Whatever a command prints as JSON is strict JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from shared.errors import (
    GreenroomError,
    InvalidParameter,
    InvalidSettings,
    InvalidTaskArguments,
    ServiceRefused,
    UnknownTask,
)
from shared.logging import configure_logging, mask_configured_secrets
from shared.runtime.metrics_setup import metrics_settings_problem, prepare_metrics_directory, serving_metrics
from shared.settings import Settings, SettingsError, load_settings, redact_url
from shared.strict_json import json_safe

logger = logging.getLogger("greenroom")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Seconds a `greenroom check` waits for each service.
CHECK_TIMEOUT_SECONDS = 5.0

#: The broker Dramatiq's CLI loads in worker processes: importing ``workers`` builds it.
WORKER_BROKER = "workers:broker"

#: Loggers whose lines a short-lived command keeps off stderr below ERROR (pika's: at
#: CRITICAL): the command prints the one line that matters itself.
QUIET_LOGGERS = {"pika": logging.CRITICAL, "dramatiq": logging.ERROR, "greenroom.producer": logging.ERROR}

#: Errors that mean "fix the input or the settings" (exit 2) rather than "try again" (exit 1).
USAGE_ERRORS = (UnknownTask, InvalidTaskArguments, InvalidParameter, InvalidSettings, ServiceRefused)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other greenroom error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"greenroom: error: {message} (see `{self.prog} --help`)\n")


def _command(subparsers: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(  # type: ignore[no-any-return]
        name,
        allow_abbrev=False,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="greenroom",
        allow_abbrev=False,
        description="greenroom: an observable Dramatiq worker platform.",
        epilog="Settings come from the environment and .env; see `greenroom config`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = _command(
        commands,
        "worker",
        "Run Dramatiq worker processes configured from the settings (SIGTERM stops them gracefully).",
        "greenroom worker --queues default,reports --processes 2 --threads 2",
    )
    worker.add_argument(
        "--queues",
        "-Q",
        nargs="+",
        action="extend",
        metavar="Q",
        help="queues to consume, separated by commas or spaces, or the flag repeated "
        "(default: WORKER_QUEUES, else all)",
    )
    worker.add_argument(
        "--processes", "-p", type=_positive_int, help="worker processes (default: WORKER_PROCESSES)"
    )
    worker.add_argument(
        "--threads", "-t", type=_positive_int, help="threads per process (default: WORKER_THREADS)"
    )
    worker.set_defaults(run=run_worker)

    send = _command(
        commands,
        "send",
        "Validate and send one task; print its message id (or, with --wait, its result as JSON).",
        """greenroom send echo --kwargs '{"payload": {"x": 1}}' --wait --timeout 5""",
    )
    send.add_argument("task", help="task name, e.g. echo or reports.build")
    send.add_argument(
        "--kwargs", type=_json_object, default={}, metavar="JSON", help="keyword arguments as a JSON object"
    )
    send.add_argument("--wait", action="store_true", help="wait for the result and print it as JSON")
    send.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait with --wait, any finite number above 0 (default: 10)",
    )
    send.set_defaults(run=run_send)

    config = _command(
        commands,
        "config",
        "Print the effective settings as JSON, secrets redacted.",
        "RABBITMQ_URL=amqp://app:pw@rabbit:5672/%%2F greenroom config",
    )
    config.set_defaults(run=run_config)

    check = _command(
        commands,
        "check",
        "Check that RabbitMQ and Redis answer (one line per service); --roundtrip also runs an echo task.",
        "greenroom check --roundtrip",
    )
    check.add_argument("--roundtrip", action="store_true", help="also send `echo` and wait for its result")
    check.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the round trip (default: 10)",
    )
    check.set_defaults(run=run_check)

    dlq = _command(
        commands,
        "dlq",
        "Inspect, replay or purge dead-lettered messages (<queue>.XQ).",
        "greenroom dlq list --queue default && greenroom dlq replay --queue default --all",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = _command(
        dlq_commands, "list", "Show dead letters (id, actor, age, arguments, error) without consuming them.",
        "greenroom dlq list --queue default --limit 20",
    )  # fmt: skip
    dlq_list.add_argument(
        "--limit", type=_positive_int, default=100, help="at most this many per queue (default: 100)"
    )
    dlq_replay = _command(
        dlq_commands, "replay",
        "Move dead letters back to their queue (all, or by message id); exit 1 if an id matches none.",
        "greenroom dlq replay --queue default --id 0c1f5a3e --fresh-retries",
    )  # fmt: skip
    which = dlq_replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id",
        dest="ids",
        nargs="+",
        metavar="ID",
        help="message ids to replay, each in full or an unambiguous prefix of 8+ characters (MIN_ID_PREFIX)",
    )
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    dlq_replay.add_argument("--fresh-retries", action="store_true", help="reset the retry count")
    dlq_purge = _command(
        dlq_commands, "purge", "Delete dead letters for good (asks for confirmation; exit 1 if not given).",
        "greenroom dlq purge --queue default --yes",
    )  # fmt: skip
    dlq_purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    for action in (dlq_list, dlq_replay, dlq_purge):
        action.add_argument(
            "--queue", "-Q", action="append", metavar="Q", help="a queue (default: every task queue)"
        )
    dlq.set_defaults(run=run_dlq)

    bench = _command(
        commands,
        "bench",
        "Benchmark bare Dramatiq against greenroom: throughput, CPU, queue wait, start-up, RSS, send rates.",
        "greenroom bench --messages 5000 --processes 2 --threads 8 --json bench.json",
    )
    bench.add_argument(
        "--messages", type=_positive_int, default=5000, help="tasks per drain run (default: 5000)"
    )
    bench.add_argument("--processes", type=_positive_int, default=2, help="worker processes (default: 2)")
    bench.add_argument("--threads", type=_positive_int, default=8, help="threads per process (default: 8)")
    bench.add_argument("--payload-bytes", type=_positive_int, default=16, help="payload size (default: 16)")
    bench.add_argument(
        "--rounds", type=_positive_int, default=3, help="worker runs per side, medians reported (default: 3)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(run=run_bench)

    healthcheck = _command(
        commands,
        "healthcheck",
        "Exit 0 if this host's worker answers /healthz on METRICS_PORT (for Docker's HEALTHCHECK).",
        "greenroom healthcheck",
    )
    healthcheck.set_defaults(run=run_healthcheck)

    demo = _command(
        commands,
        "demo-producer",
        "Send a steady mix of tasks (echo, reports, retries, failures) until stopped.",
        "greenroom demo-producer --rate 5 --duration 60",
    )
    demo.add_argument("--rate", type=_positive_float, default=5.0, help="tasks per second (default: 5)")
    demo.add_argument(
        "--duration", type=_positive_float, help="stop after this many seconds (default: run until SIGTERM)"
    )
    demo.set_defaults(run=run_demo_producer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenroom`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"greenroom: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    mask_configured_secrets(settings.secrets())  # also outside URLs, as written and decoded
    # A service's logs are its output (stdout); other commands answer on stdout and log to stderr.
    services = (run_worker, run_demo_producer)
    log_stream: Literal["stdout", "stderr"] = "stdout" if args.run in services else "stderr"
    configure_logging(level=settings.LOG_LEVEL, fmt=settings.LOG_FORMAT, stream=log_stream)
    if args.run not in services:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(max(level, logging.getLogger(name).getEffectiveLevel()))
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    return run(args, settings)


def _failed(error: GreenroomError) -> int:
    """Print ``error`` as greenroom's one line; its exit code (2: fix the input or settings)."""
    if isinstance(error, USAGE_ERRORS):
        print(f"greenroom: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"greenroom: {error}", file=sys.stderr)
    return EXIT_FAILED


def _print_json(value: Any) -> None:
    """Print ``value`` as strict JSON; a NaN or infinity in it (a result stored before
    arguments were checked) is printed as null, with one warning line on stderr."""
    safe = json_safe(value)
    if safe != value and json.dumps(safe) != json.dumps(value):
        print("greenroom: warning: NaN or Infinity in the value is printed as null", file=sys.stderr)
    print(json.dumps(safe, allow_nan=False))


# greenroom worker -------------------------------------------------------------------


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run Dramatiq's own CLI in this process, so signals reach its master directly."""
    settings = _export_worker_settings(args, settings)
    if (metrics_problem := metrics_settings_problem(settings)) is not None:
        print(f"greenroom: error: {metrics_problem}", file=sys.stderr)
        return EXIT_USAGE
    from shared.service_refusals import check_services  # imported here: only this command needs it
    from shared.tasks import TASKS

    known = sorted({task.queue for task in TASKS.values()})
    if unknown := [repr(queue) for queue in settings.WORKER_QUEUES if queue not in known]:
        print(
            f"greenroom: error: WORKER_QUEUES (or --queues): no task uses queue {', '.join(unknown)} "
            f"(queues with tasks: {', '.join(known)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    queues = settings.WORKER_QUEUES or known
    stores_results = any(task.store_results for task in TASKS.values() if task.queue in queues)
    refused = check_services(settings, queues, stores_results=stores_results)
    if refused is not None:
        print(f"greenroom: error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    prepare_metrics_directory(settings)

    import dramatiq.cli  # imported here: only this command needs it

    dramatiq_argv = [
        WORKER_BROKER,
        "--processes", str(settings.WORKER_PROCESSES),
        "--threads", str(settings.WORKER_THREADS),
        "--worker-shutdown-timeout", str(int(settings.WORKER_SHUTDOWN_TIMEOUT_SECONDS * 1000)),
        "--skip-logging",
    ]  # fmt: skip
    if settings.WORKER_QUEUES:
        dramatiq_argv += ["--queues", *settings.WORKER_QUEUES]
    dramatiq_args = dramatiq.cli.make_argument_parser().parse_args(dramatiq_argv)
    logger.info(
        "greenroom worker starting",
        extra={
            "process_type": settings.PROCESS_TYPE,
            "processes": settings.WORKER_PROCESSES,
            "threads": settings.WORKER_THREADS,
            "queues": settings.WORKER_QUEUES or "all",
            "metrics": f"http://{settings.METRICS_HOST}:{settings.metrics_port}/metrics",
            "shutdown_timeout_seconds": settings.WORKER_SHUTDOWN_TIMEOUT_SECONDS,
        },
    )
    # Dramatiq's master writes its children's log lines to sys.stderr; logs belong on stdout.
    sys.stderr = sys.stdout
    with serving_metrics(settings):  # /metrics, /healthz, /readyz for as long as worker processes run
        exit_code: int = dramatiq.cli.main(dramatiq_args)
    logger.info("greenroom worker stopped", extra={"exit_code": exit_code})
    return exit_code


def _export_worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """Apply the command's flags to the environment the worker processes inherit.

    Worker processes (and the metrics server) read their settings after
    Dramatiq forks them; writing the effective values here keeps every process
    of this worker in agreement.
    """
    queues = _queue_names(args.queues) if args.queues else settings.WORKER_QUEUES
    effective = {
        "WORKER_PROCESSES": str(args.processes or settings.WORKER_PROCESSES),
        "WORKER_THREADS": str(args.threads or settings.WORKER_THREADS),
        "WORKER_QUEUES": ",".join(queues),
        "PROCESS_TYPE": settings.PROCESS_TYPE or ("-".join(queues) if queues else "all"),
        "METRICS_PORT": str(settings.metrics_port),
    }
    os.environ.update(effective)
    return settings.model_copy(
        update={
            "WORKER_PROCESSES": int(effective["WORKER_PROCESSES"]),
            "WORKER_THREADS": int(effective["WORKER_THREADS"]),
            "WORKER_QUEUES": list(queues),
            "PROCESS_TYPE": effective["PROCESS_TYPE"],
            "METRICS_PORT": settings.metrics_port,
        }
    )


# greenroom send ---------------------------------------------------------------------


def run_send(args: argparse.Namespace, settings: Settings) -> int:
    """Send one task; with --wait print its result as JSON."""
    from shared.producer import Producer

    producer = Producer(settings)
    try:
        handle = producer.send(args.task, **args.kwargs)
        if not args.wait:
            print(handle.message_id)
            return EXIT_OK
        _print_json(handle.result(timeout=args.timeout))
        return EXIT_OK
    except GreenroomError as error:
        return _failed(error)
    finally:
        producer.close()


# greenroom config -------------------------------------------------------------------


def run_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings, secrets redacted."""
    print(json.dumps(json_safe(settings.public_dict()), indent=2, sort_keys=True, allow_nan=False))
    return EXIT_OK


# greenroom check --------------------------------------------------------------------


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    """One line per service: `rabbitmq ok ...`, `rabbitmq REFUSED ...` (it refuses the
    settings: exit 2) or `rabbitmq FAILED ...` (unreachable: exit 1)."""
    from shared.service_refusals import outage_line, redis_refusal_line, refusal_line

    checks: list[tuple[str, str, Callable[[Settings], str], Callable[..., str | None]]] = [
        ("rabbitmq", redact_url(settings.rabbitmq_url), _check_rabbitmq, refusal_line),
        ("redis", redact_url(settings.redis_url), _check_redis, redis_refusal_line),
    ]
    code = EXIT_OK
    for name, where, check, refusal in checks:
        try:
            detail = check(settings)
            print(f"{name} ok {where} ({detail})")
        except Exception as error:  # any failure is the answer we report
            refused = refusal(error, settings)
            if refused is not None:
                code = EXIT_USAGE
                print(f"{name} REFUSED {refused}")
            else:
                code = max(code, EXIT_FAILED)
                print(f"{name} FAILED {where}: {outage_line(error)}")
    if code == EXIT_OK and args.roundtrip:
        code = _check_roundtrip(settings, args.timeout)
    return code


def _check_rabbitmq(settings: Settings) -> str:
    import pika

    parameters = pika.URLParameters(settings.rabbitmq_url)
    parameters.socket_timeout = CHECK_TIMEOUT_SECONDS
    parameters.blocked_connection_timeout = CHECK_TIMEOUT_SECONDS
    parameters.connection_attempts = 1
    connection = pika.BlockingConnection(parameters)
    try:
        properties = connection._impl.server_properties
        version = properties.get("version", b"?")
        return f"RabbitMQ {version.decode() if isinstance(version, bytes) else version}"
    finally:
        connection.close()


def _check_redis(settings: Settings) -> str:
    import redis

    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
        return f"Redis {client.info('server').get('redis_version', '?')}"
    finally:
        client.close()


def _check_roundtrip(settings: Settings, timeout: float) -> int:
    from shared.producer import Producer

    token = uuid.uuid4().hex
    producer = Producer(settings)
    try:
        handle = producer.send("echo", payload=token)
        echoed = handle.result(timeout=timeout)
    except GreenroomError as error:
        print(f"roundtrip FAILED: {error}")
        return EXIT_USAGE if isinstance(error, ServiceRefused) else EXIT_FAILED
    finally:
        producer.close()
    if echoed != token:
        print(f"roundtrip FAILED: echo returned {json.dumps(json_safe(echoed))[:80]}, expected {token!r}")
        return EXIT_FAILED
    print(f"roundtrip ok (message {handle.message_id})")
    return EXIT_OK


# greenroom dlq -------------------------------------------------------------------------


def run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """List, replay or purge dead letters."""
    from shared.cli.dead_letters import DeadLetters
    from shared.producer import Producer
    from shared.tasks import TASKS

    known = sorted({contract.queue for contract in TASKS.values()})
    queues = sorted(set(_queue_names(args.queue))) if args.queue else known
    if unknown := [repr(queue) for queue in queues if queue not in known]:
        print(
            f"greenroom: error: --queue: no task uses queue {', '.join(unknown)} "
            f"(queues with tasks: {', '.join(known)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    producer = Producer(settings)
    letters = DeadLetters(producer)
    try:
        if args.dlq_command == "list":
            return _dlq_list(letters, queues, args.limit)
        if args.dlq_command == "replay":
            return _dlq_replay(letters, queues, args)
        return _dlq_purge(letters, queues, confirmed=args.yes)
    except GreenroomError as error:  # nothing is lost: a dead letter goes only once replayed
        return _failed(error)
    finally:
        producer.close()


def _dlq_list(letters: Any, queues: list[str], limit: int) -> int:
    for queue in queues:
        found = letters.list(queue, limit=limit)
        print(f"{queue}.XQ: {len(found)} dead letter(s)")
        for letter in found:
            print(f"  {letter.line()}")
    return EXIT_OK


def _dlq_replay(letters: Any, queues: list[str], args: argparse.Namespace) -> int:
    """Replay every dead letter, or those the ids name; each id must name exactly one
    dead letter of ``queues`` (checked before anything is replayed)."""
    from shared.cli.dead_letters import resolve_ids

    wanted: dict[str, set[str] | None] = dict.fromkeys(queues)
    if not args.all:
        wanted = dict(resolve_ids(args.ids, {queue: letters.ids(queue) for queue in queues}))
    for queue, ids in wanted.items():
        count = letters.replay(queue, ids=ids, fresh_retries=args.fresh_retries)
        print(f"{queue}.XQ: replayed {count} to {queue}")
        if ids is not None and count < len(ids):
            print(f"greenroom: {queue}.XQ: {len(ids) - count} of the ids left it meanwhile", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _dlq_purge(letters: Any, queues: list[str], *, confirmed: bool) -> int:
    for queue in queues:
        if not confirmed and not _confirm(
            f"Delete every dead letter of {queue}? Type the queue name: ", queue
        ):
            print(
                f"greenroom: {queue}.XQ: left as it was (not confirmed; --yes skips the question)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"{queue}.XQ: purged {letters.purge(queue)}")
    return EXIT_OK


def _confirm(prompt: str, expected: str) -> bool:
    """Whether the answer read from stdin is ``expected``; the question is asked (on stderr)
    only when stdin is a terminal."""
    if sys.stdin.isatty():
        print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip() == expected


# greenroom bench -----------------------------------------------------------------------


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run the side-by-side benchmark: progress on stderr, the table on stdout."""
    import pika.exceptions

    from shared.bench.run import Bench, BenchOptions, format_table, write_json

    options = BenchOptions(args.messages, args.processes, args.threads, args.payload_bytes, args.rounds)
    try:
        report = Bench(settings, options, progress=sys.stderr).run()
    except (GreenroomError, TimeoutError, pika.exceptions.AMQPError) as error:  # a step failed or hung
        print(f"greenroom: bench failed: {str(error) or type(error).__name__}", file=sys.stderr)
        return EXIT_FAILED
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
    return EXIT_OK


# greenroom healthcheck / demo-producer ------------------------------------------------


def run_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """GET /healthz of the worker on this host."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_SECONDS) as response:
            print(f"healthy ({url})")
            return EXIT_OK if response.status == 200 else EXIT_FAILED
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy ({url}): {error}")
        return EXIT_FAILED


def run_demo_producer(args: argparse.Namespace, settings: Settings) -> int:
    """Send demo traffic."""
    from shared.cli.demo_producer import run_demo
    from shared.producer import Producer

    producer = Producer(settings)
    try:
        run_demo(producer, rate=args.rate, duration=args.duration)
    finally:
        producer.close()
    return EXIT_OK


# argument types ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r:.40}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r:.40}")
    return value


def _queue_names(values: list[str]) -> list[str]:
    """Queue names from flag values, each holding one or more separated by commas or spaces."""
    return [name for value in values for name in re.split(r"[,\s]+", value) if name]


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _json_object(text: str) -> dict[str, Any]:
    """A strict JSON object (no NaN or Infinity)."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    except (ValueError, RecursionError) as error:  # NaN, an integer too long, nesting too deep
        raise argparse.ArgumentTypeError(
            f"not valid JSON: {str(error).split(';')[0] or 'nested too deeply'}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"payload\": 1}'")
    return value


if __name__ == "__main__":
    sys.exit(main())
