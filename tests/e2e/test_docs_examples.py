"""Every output the README and docs/ show under a command is what that command prints.

The examples are read from the documents (tests/docs_examples.py) and run in order
against real RabbitMQ, Redis and a `greenroom worker`. Ids, numbers and padding vary
from run to run: an id shown is mapped to the one printed, and digits match digits.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from shared.settings import Settings, redact_url
from tests.docs_examples import DOCUMENTS, ROOT, Example, all_examples, is_greenroom, split_assignments
from tests.e2e.conftest import StartWorker
from tests.support import GREENROOM, Process, run_cli, wait_for

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHOWN = [example for example in all_examples() if example.output]
DOCUMENTS_WITH_OUTPUT = [d for d in DOCUMENTS if any(e.block.document == d for e in SHOWN)]


def _pattern(shown: list[str]) -> re.Pattern[str]:
    parts = []
    for piece in re.split(f"({_UUID.pattern})", "\n".join(shown)):
        if _UUID.fullmatch(piece):
            parts.append(f"({_UUID.pattern})")
            continue
        text = re.sub(r"(\\ )+", r"\\s+", re.escape(piece))
        parts.append(re.sub(r"\d+", r"\\d+", text))
    return re.compile("".join(parts))


def _printed(stdout: str, stderr: str, env: dict[str, str]) -> str:
    """What a person sees, with the test's service URLs shown as the documented defaults."""
    lines = []
    for line in (stdout + stderr).splitlines():
        try:
            if "logger" in json.loads(line):
                continue  # a log line, not the command's answer
        except (ValueError, TypeError):
            pass
        lines.append(line)
    text = "\n".join(lines)
    defaults = Settings.model_fields
    for name in ("RABBITMQ_URL", "REDIS_URL"):
        default = defaults[name].default.get_secret_value()
        text = text.replace(redact_url(env[name]), redact_url(default))
    return text


@pytest.mark.parametrize("document", DOCUMENTS_WITH_OUTPUT, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_shown_output_is_what_the_command_prints(
    document: Path, start_worker: StartWorker, service_env: dict[str, str], workdir: Path
) -> None:
    start_worker(processes=1, threads=4)
    ids: dict[str, str] = {}  # id shown in the document -> id printed in this run
    for example in [e for e in SHOWN if e.block.document == document]:
        assignments, argv = split_assignments(example.argv())
        assert argv and is_greenroom(argv[0]), f"{example.where()}: shows output of a non-greenroom command"
        arguments = [_map_ids(word, ids) for word in argv[1:]]
        env = {**service_env, **assignments}
        if arguments[:1] == ["worker"] and not assignments:
            printed = _ready_line(example, arguments, env, workdir)
        else:
            printed = _run_until_shown(example, arguments, env, workdir)
        match = _pattern(example.output).search(printed)
        assert match, f"{example.where()}\nshown:\n" + "\n".join(example.output) + f"\nprinted:\n{printed}"
        for shown_id, printed_id in zip(
            _UUID.findall("\n".join(example.output)), match.groups(), strict=True
        ):
            ids[shown_id] = printed_id


def _map_ids(word: str, ids: dict[str, str]) -> str:
    for shown, printed in ids.items():
        for length in (len(shown), 8):
            if shown[:length] in word:
                return word.replace(shown[:length], printed[:length])
    return word


def _run_until_shown(example: Example, arguments: list[str], env: dict[str, str], workdir: Path) -> str:
    """Run the command; a dlq command again until it shows the output (a dead letter lands
    a moment after the task's result)."""
    deadline = time.monotonic() + (10 if arguments[:1] == ["dlq"] else 0)
    while True:
        completed = run_cli(arguments, env, workdir)
        printed = _printed(completed.stdout, completed.stderr, env)
        if _pattern(example.output).search(printed) or time.monotonic() > deadline:
            return printed
        time.sleep(0.2)


def _ready_line(example: Example, arguments: list[str], env: dict[str, str], workdir: Path) -> str:
    """Start the documented worker, wait for its line of its own, stop it."""
    from tests.support import free_port

    worker = Process([GREENROOM, *arguments], {**env, "METRICS_PORT": str(free_port())}, workdir)

    def messages() -> str:  # the line shown is the message of the worker's greenroom.worker line
        return "\n".join(
            line["message"] for line in worker.json_lines() if line.get("logger") == "greenroom.worker"
        )

    try:
        pattern = _pattern(example.output)
        wait_for(lambda: bool(pattern.search(messages())), 30, f"the line shown at {example.where()}")
    except AssertionError:
        return worker.output()
    finally:
        worker.stop()
    return messages()
