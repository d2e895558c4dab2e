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
        ("amqp://app:p@ss@host/vh", "amqp://app:***@host/vh"),
        ("amqp://app:Sup3r/Secret@host:5672/vh", "amqp://app:***@host:5672/vh"),
        ("amqp://app:Sup3r?Secret@host:5672/vh", "amqp://app:***@host:5672/vh"),
        ("amqp://app:Sup3r#Secret@host:5672/vh", "amqp://app:***@host:5672/vh"),
        ("amqp://app@host/vh", "amqp://app@host/vh"),
        ("amqp://host/vh", "amqp://host/vh"),
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


def test_the_beat_catch_up_window_must_outlast_a_failover(clean_env: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"BEAT_CATCHUP_SECONDS: must be at least twice BEAT_LEASE_SECONDS \(20\)"
    ):
        load_settings(BEAT_CATCHUP_SECONDS=15, BEAT_LEASE_SECONDS=10)
    assert load_settings(BEAT_CATCHUP_SECONDS=20, BEAT_LEASE_SECONDS=10).BEAT_CATCHUP_SECONDS == 20


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672/x",
        "amqp://127.0.0.1:5672/x",  # no credentials: pika logs in as guest/guest
        "amqp://guest:gu%65st@127.0.0.1:5672/x",  # percent-encoded
        "amqp://%67uest:guest@127.0.0.1:5672/x",
        "amqp://:s3cret@127.0.0.1:5672/x",  # an empty user name: pika uses guest/guest
    ],
)
def test_guest_credentials_in_any_spelling_are_refused_in_production(clean_env: Path, url: str) -> None:
    with pytest.raises(SettingsError, match="RABBITMQ_URL: the default guest/guest credentials"):
        load_settings(ENVIRONMENT="production", RABBITMQ_URL=url)


def test_guest_credentials_are_refused_in_production(clean_env: Path) -> None:
    with pytest.raises(SettingsError, match="RABBITMQ_URL: the default guest/guest credentials"):
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
        "default,bad!queue",
        "WORKER_QUEUES='default,bad!queue': 'bad!queue' is not a valid queue name",
    ),
    ("METRICS_PORT", "70000", "METRICS_PORT='70000': Input should be less than or equal to 65535"),
    ("TASK_TIME_LIMIT_SECONDS", "inf", "TASK_TIME_LIMIT_SECONDS='inf': Input should be a finite number"),
    ("TASK_MAX_BACKOFF_SECONDS", "inf", "TASK_MAX_BACKOFF_SECONDS='inf': Input should be a finite number"),
    ("TASK_MIN_BACKOFF_SECONDS", "nan", "TASK_MIN_BACKOFF_SECONDS='nan': Input should be a finite number"),
    ("TASK_TIME_LIMIT_SECONDS", "1e20", "TASK_TIME_LIMIT_SECONDS='1e20': Input should be less than or equal"),
    ("RESULT_TTL_SECONDS", "1" + "0" * 20, "RESULT_TTL_SECONDS='1" + "0" * 20 + "': Input should be less"),
    (
        "DEAD_LETTER_TTL_SECONDS",
        "1" + "0" * 20,
        "DEAD_LETTER_TTL_SECONDS='1" + "0" * 20 + "': Input should be",
    ),
    (
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "-4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='-4': Input should be greater than or equal to 1",
    ),
    (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "0",
        "OTEL_BSP_MAX_QUEUE_SIZE='0': Input should be greater than or equal to 1",
    ),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon", "OTEL_BSP_SCHEDULE_DELAY='soon': Input should be a valid integer"),
    (
        "OTEL_BSP_EXPORT_TIMEOUT",
        "-1",
        "OTEL_BSP_EXPORT_TIMEOUT='-1': Input should be greater than or equal to 1",
    ),
    (
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "4096",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE (2048)",
    ),
    ("REDIS_URL", "redis://127.0.0.1:6379/notanumber", "REDIS_URL: the database (path /N or ?db=N) must be"),
    ("REDIS_URL", "redis://127.0.0.1:6379?db=x", "REDIS_URL: the database (path /N or ?db=N) must be"),
    ("REDIS_URL", "redis://127.0.0.1:6379/-1", "REDIS_URL: the database (path /N or ?db=N) must be"),
    ("REDIS_URL", "redis://127.0.0.1:6379/1?db=2", "REDIS_URL: the database is given more than once"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=x", "REDIS_URL: ?socket_timeout= has a value"),
    ("RABBITMQ_URL", "amqp://app@127.0.0.1:5672/x", "RABBITMQ_URL: a user name needs a password"),
    ("RABBITMQ_URL", "amqp://127.0.0.1:5672/x?heartbeat=abc", "RABBITMQ_URL: ?heartbeat= is not an option"),
    (
        "RABBITMQ_URL",
        "amqp://127.0.0.1:5672/x?socket_timeout=inf",
        "RABBITMQ_URL: ?socket_timeout= is not an",
    ),
    ("RABBITMQ_URL", "amqp://127.0.0.1:5672/x?bogus=1", "RABBITMQ_URL: ?bogus= is not an option pika takes"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=inf", "REDIS_URL: ?socket_timeout= has a value"),
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


SEND = ["send", "echo", "--kwargs", '{"payload": 1}']

#: Passwords holding characters a URL reserves; no error line may show any part of them.
PASSWORD_PIECES = ("Sup3r", "S3cret")
RESERVED_IN_PASSWORDS = ["/", "?", "#", "/9/", "?db=1#", "123/"]


def _url_with_password(name: str, password: str) -> str:
    scheme = {"RABBITMQ_URL": "amqp", "REDIS_URL": "redis"}.get(name, "http")
    if password.endswith("/"):  # "user:123/..." parses as host "user", port 123
        return f"{scheme}://app:123/{PASSWORD_PIECES[0]}{PASSWORD_PIECES[1]}@127.0.0.1:5672/x"
    return f"{scheme}://app:{PASSWORD_PIECES[0]}{password}{PASSWORD_PIECES[1]}@127.0.0.1:5672/x"


@pytest.mark.parametrize("reserved", RESERVED_IN_PASSWORDS)
@pytest.mark.parametrize(
    "name", ["RABBITMQ_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_no_error_shows_a_password_with_reserved_characters(
    clean_env: Path, name: str, reserved: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(**{name: _url_with_password(name, reserved)})
    message = str(refused.value)
    assert message.startswith(f"invalid setting {name}: not a valid URL"), message
    assert "percent-encode" in message
    assert not any(piece in message for piece in PASSWORD_PIECES), message


def test_a_percent_encoded_password_with_reserved_characters_works(clean_env: Path) -> None:
    settings = load_settings(RABBITMQ_URL="amqp://app:Sup3r%2F%3F%23%40S3cret@127.0.0.1:5672/x")
    assert settings.public_dict()["RABBITMQ_URL"] == "amqp://app:***@127.0.0.1:5672/x"


def test_a_refused_password_with_a_slash_is_not_in_the_cli_line(clean_env: Path) -> None:
    completed = run_cli(
        ["config"], _env_with("RABBITMQ_URL", _url_with_password("RABBITMQ_URL", "/")), clean_env
    )
    assert completed.returncode == 2, completed
    assert not any(piece in completed.stderr + completed.stdout for piece in PASSWORD_PIECES), (
        completed.stderr
    )


def _float_fields() -> list[str]:
    return [name for name, field in Settings.model_fields.items() if float in _types_of(field.annotation)]


def _types_of(annotation: object) -> set[object]:
    return {annotation, *getattr(annotation, "__args__", ())}


def test_every_float_setting_is_declared() -> None:
    assert {"TASK_TIME_LIMIT_SECONDS", "SEND_RETRY_TIMEOUT_SECONDS", "OTEL_TRACES_SAMPLER_ARG"} <= set(
        _float_fields()
    )


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("name", _float_fields())
def test_no_float_setting_takes_inf_or_nan(clean_env: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"^invalid setting {name}="):
        load_settings(**{name: value})


@pytest.mark.parametrize(
    "name",
    [
        "TASK_TIME_LIMIT_SECONDS",
        "TASK_MIN_BACKOFF_SECONDS",
        "TASK_MAX_BACKOFF_SECONDS",
        "RESULT_TTL_SECONDS",
        "DEAD_LETTER_TTL_SECONDS",
        "WORKER_SHUTDOWN_TIMEOUT_SECONDS",
        "SEND_RETRY_TIMEOUT_SECONDS",
        "RESULT_STORE_RETRY_SECONDS",
        "TRACING_FLUSH_TIMEOUT_SECONDS",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_EXPORT_TIMEOUT",
    ],
)
def test_every_duration_has_an_upper_bound(clean_env: Path, name: str) -> None:
    """Durations become milliseconds (Dramatiq options, RabbitMQ and Redis TTLs): 1e20 s is no TTL."""
    with pytest.raises(SettingsError, match=rf"^invalid setting {name}='1{'0' * 20}': Input should be less"):
        load_settings(**{name: "1" + "0" * 20})


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("redis://127.0.0.1:6379", None),
        ("redis://127.0.0.1:6379/", None),
        ("redis://127.0.0.1:6379/5", "5"),
        ("redis://127.0.0.1:6379?db=5", "5"),
        ("redis://127.0.0.1:6379/5?db=5", "5"),
        ("redis://127.0.0.1:6379/5?socket_timeout=2.5&health_check_interval=10", "5"),
    ],
)
def test_redis_database_forms_that_redis_py_reads(clean_env: Path, url: str, database: str | None) -> None:
    import redis.connection

    assert load_settings(REDIS_URL=url).redis_url == url
    assert redis.connection.parse_url(url).get("db") == (None if database is None else int(database))


@pytest.mark.parametrize(
    ("args", "name", "value", "expected"),
    [
        (["worker"], "TASK_TIME_LIMIT_SECONDS", "inf", "TASK_TIME_LIMIT_SECONDS='inf'"),
        (["worker"], "TASK_MAX_BACKOFF_SECONDS", "inf", "TASK_MAX_BACKOFF_SECONDS='inf'"),
        (["worker"], "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='-4'"),
        (["worker"], "REDIS_URL", "redis://127.0.0.1:6379/notanumber", "REDIS_URL: the database"),
        (SEND, "RABBITMQ_URL", "amqp://127.0.0.1:5672/x?heartbeat=abc", "RABBITMQ_URL: ?heartbeat="),
        (
            ["send", "echo", "--kwargs", '{"payload": 1}'],
            "RESULT_TTL_SECONDS",
            "1" + "0" * 20,
            "RESULT_TTL_SECONDS=",
        ),
    ],
)
def test_commands_refuse_unusable_values(
    clean_env: Path, args: list[str], name: str, value: str, expected: str
) -> None:
    _assert_one_line_error(run_cli(args, _env_with(name, value), clean_env), expected)


def test_otel_bsp_values_from_dotenv_are_checked_too(clean_env: Path) -> None:
    (clean_env / ".env").write_text("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=-4\n")
    _assert_one_line_error(run_cli(["config"], _env_with("LOG_LEVEL", "INFO"), clean_env), "OTEL_BSP_MAX")


def test_amqp_query_options_pika_takes_are_accepted(clean_env: Path) -> None:
    url = "amqps://app:pw@rabbit:5671/x?heartbeat=30&connection_attempts=3&socket_timeout=2.5"
    assert load_settings(RABBITMQ_URL=url).rabbitmq_url == url


@pytest.mark.parametrize(
    "name",
    [
        "TASK_TIME_LIMIT_SECONDS",
        "TASK_MIN_BACKOFF_SECONDS",
        "TASK_MAX_BACKOFF_SECONDS",
        "WORKER_SHUTDOWN_TIMEOUT_SECONDS",
    ],
)
def test_durations_in_milliseconds_are_at_least_one(clean_env: Path, name: str) -> None:
    """They become whole milliseconds for Dramatiq: 0.0001 s would be 0 ms."""
    with pytest.raises(SettingsError, match=rf"^invalid setting {name}='0.0001': Input should be greater"):
        load_settings(**{name: "0.0001"})
    assert getattr(load_settings(**{"TASK_MIN_BACKOFF_SECONDS": "0.001", name: "0.001"}), name) == 0.001
