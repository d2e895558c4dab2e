"""Settings: defaults, precedence, and the one-line error for each kind of bad value."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError, load_settings, redact_url
from tests.support import run_cli


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_documented_values(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.rabbitmq_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.BROKER_CONFIRM_DELIVERY is True
    assert settings.WORKER_SHUTDOWN_TIMEOUT_SECONDS < 30  # below Kubernetes' default grace period
    assert settings.TASK_MAX_RETRIES == 3
    assert settings.TASK_TIME_LIMIT_SECONDS == 300
    assert settings.LOG_FORMAT == "json"
    assert settings.metrics_port == 9300


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("WORKER_THREADS=3\nWORKER_PROCESSES=5\nLOG_LEVEL=debug\n")
    monkeypatch.setenv("WORKER_THREADS", "7")
    settings = load_settings()
    assert settings.WORKER_THREADS == 7  # environment
    assert settings.WORKER_PROCESSES == 5  # .env
    assert settings.LOG_LEVEL == "DEBUG"  # .env, case-normalised


def test_empty_variable_means_default(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_THREADS", "")
    assert load_settings().WORKER_THREADS == 8


def test_queues_are_comma_separated(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_QUEUES", "default, reports")
    assert load_settings().WORKER_QUEUES == ["default", "reports"]


def test_port_is_the_metrics_port_fallback(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "5100")
    assert load_settings().metrics_port == 5100
    monkeypatch.setenv("METRICS_PORT", "9400")
    assert load_settings().metrics_port == 9400


def test_secrets_are_not_in_repr_or_public_dict(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqp://app:hunter2@rabbit:5672/%2F")
    monkeypatch.setenv("REDIS_URL", "rediss://:hunter2@cache:6380/1")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    public = settings.public_dict()
    assert public["RABBITMQ_URL"] == "amqp://app:***@rabbit:5672/%2F"
    assert public["REDIS_URL"] == "rediss://:***@cache:6380/1"
    assert "hunter2" not in str(public)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("amqps://user:p%40ss@host/vh", "amqps://user:***@host/vh"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_bad_value_raises_settings_error_naming_the_variable(clean_env: Path) -> None:
    with pytest.raises(SettingsError, match=r"WORKER_THREADS='0'"):
        load_settings(WORKER_THREADS="0")


def test_min_backoff_above_max_is_refused(clean_env: Path) -> None:
    with pytest.raises(
        SettingsError, match="TASK_MIN_BACKOFF_SECONDS: must not exceed TASK_MAX_BACKOFF_SECONDS"
    ):
        load_settings(TASK_MIN_BACKOFF_SECONDS=10, TASK_MAX_BACKOFF_SECONDS=5)


def test_guest_credentials_are_refused_in_production(clean_env: Path) -> None:
    with pytest.raises(SettingsError, match="RABBITMQ_URL: the default guest/guest credentials are refused"):
        load_settings(ENVIRONMENT="production")
    assert (
        load_settings(ENVIRONMENT="production", RABBITMQ_URL="amqp://app:s3cret@rabbit/%2F").ENVIRONMENT
        == "production"
    )
    assert load_settings(ENVIRONMENT="development").rabbitmq_url.startswith("amqp://guest:guest@")


BAD_VALUES = [
    ("RABBITMQ_URL", "not a url at all", "RABBITMQ_URL: scheme must be one of amqp://, amqps://"),
    ("RABBITMQ_URL", "amqp://user:hunter2@host:notaport/", "RABBITMQ_URL: not a valid URL"),
    ("REDIS_URL", "http://user:hunter2@cache:6379", "REDIS_URL: scheme must be one of redis://, rediss://"),
    ("WORKER_THREADS", "-2", "WORKER_THREADS='-2': Input should be greater than or equal to 1"),
    ("WORKER_PROCESSES", "many", "WORKER_PROCESSES='many': Input should be a valid integer"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='loud': Input should be 'DEBUG', 'INFO'"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml': Input should be 'json' or 'console'"),
    (
        "BROKER_CONFIRM_DELIVERY",
        "perhaps",
        "BROKER_CONFIRM_DELIVERY='perhaps': Input should be a valid boolean",
    ),
    (
        "WORKER_QUEUES",
        "default,bad queue",
        "WORKER_QUEUES='default,bad queue': 'bad queue' is not a valid queue name",
    ),
    ("METRICS_PORT", "70000", "METRICS_PORT='70000': Input should be less than or equal to 65535"),
]


def _assert_one_line_error(completed: subprocess.CompletedProcess[str], expected: str) -> None:
    assert completed.returncode == 2, completed
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("greenroom: error: invalid setting "), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in completed.stderr
    assert "hunter2" not in completed.stderr + completed.stdout
    assert completed.stdout == ""


def _env_with(name: str, value: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env[name] = value
    return env


@pytest.mark.parametrize(
    ("name", "value", "expected"), BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES]
)
def test_each_bad_value_exits_2_with_one_line(clean_env: Path, name: str, value: str, expected: str) -> None:
    _assert_one_line_error(run_cli(["config"], _env_with(name, value), clean_env), expected)


@pytest.mark.parametrize("args", [["worker"], ["send", "echo"], ["check"], ["check", "--roundtrip"]])
def test_every_command_refuses_bad_settings(clean_env: Path, args: list[str]) -> None:
    completed = run_cli(args, _env_with("RABBITMQ_URL", "amqp://u:hunter2@host:port/"), clean_env)
    _assert_one_line_error(completed, "RABBITMQ_URL: not a valid URL")
