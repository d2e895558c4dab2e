"""Prometheus configs and rules pass promtool, and the rule unit tests pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import REPO

PROMETHEUS = REPO / "observability" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (CI installs it)"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)


def test_rules_are_valid() -> None:
    completed = _promtool("check", "rules", *sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml")))
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_rule_unit_tests_pass() -> None:
    completed = _promtool("test", "rules", "tests/rules_test.yml")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_scrape_configs_are_valid(config: str) -> None:
    completed = _promtool("check", "config", "--syntax-only", config)
    assert completed.returncode == 0, completed.stdout + completed.stderr
