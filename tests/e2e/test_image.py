"""The Dockerfile, exercised as far as possible without a Docker engine: its structure,
its install command in a clean venv, and its entrypoint and healthcheck against a real worker."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import StartWorker
from tests.support import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def _final(instruction: str) -> list[str]:
    return [arguments for name, arguments in _stages()[-1] if name == instruction]


def test_multi_stage_non_root_exec_form_with_healthcheck() -> None:
    build, final = _stages()
    assert build[0][1].endswith(" AS build")
    assert any(name == "COPY" and args.startswith("--from=build ") for name, args in final)
    [user] = _final("USER")
    assert user not in ("root", "0")
    assert json.loads(_final("ENTRYPOINT")[0]) == ["greenroom"]  # exec form: SIGTERM reaches the worker
    assert json.loads(_final("CMD")[0]) == ["worker"]
    [healthcheck] = _final("HEALTHCHECK")
    assert healthcheck.split(" CMD ", 1)[1] == '["greenroom", "healthcheck"]'
    assert not [args for args in _final("RUN") if re.search(r"apt-get|gcc|build-essential", args)]


def test_build_context_excludes_local_state() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv built with the Dockerfile's own COPY and pip install steps."""
    context = tmp_path_factory.mktemp("build-context")
    build, _ = _stages()
    for name, args in build:
        if name == "COPY":
            *sources, _destination = shlex.split(args)
            for source in sources:
                origin = REPO / source
                target = context / source
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(origin, target)
    venv = context / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    [install] = [args for name, args in build if name == "RUN" and "pip install" in args]
    command = shlex.split(install.replace("/opt/greenroom/bin/pip", str(venv / "bin" / "pip")))
    completed = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return venv


def test_entrypoint_runs_and_healthcheck_reports_a_real_worker(
    image_venv: Path, start_worker: StartWorker, service_env: dict[str, str], workdir: Path
) -> None:
    entrypoint = str(image_venv / "bin" / "greenroom")
    assert subprocess.run([entrypoint, "worker", "--help"], capture_output=True, timeout=60).returncode == 0

    worker = start_worker(processes=1, threads=1)
    env = {**service_env, "METRICS_PORT": str(worker.metrics_port)}
    healthy = subprocess.run(
        [entrypoint, "healthcheck"], env=env, cwd=workdir, capture_output=True, text=True
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr

    worker.signal()
    assert worker.wait(timeout=30) == 0
    unhealthy = subprocess.run(
        [entrypoint, "healthcheck"], env=env, cwd=workdir, capture_output=True, text=True
    )
    assert unhealthy.returncode == 1
    assert unhealthy.stdout.startswith("unhealthy")
