"""The one place greenroom reads its configuration from.

Every process (workers, producers, the CLI) builds a :class:`Settings` from the
environment and an optional ``.env`` file in the working directory; real
environment variables win over ``.env``. Field names are the variable names.

>>> settings = load_settings(_env_file=None)   # the environment only, no .env file
>>> settings.WORKER_THREADS
8

A bad value raises :class:`SettingsError` whose text is one line naming the
variable; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.service_urls import (
    RABBITMQ_DEFAULT_CREDENTIALS,
    check_amqp_query,
    check_redis_database,
    check_redis_query,
    check_url,
    rabbitmq_credentials,
    redact_url,
)

__all__ = ["Settings", "SettingsError", "get_settings", "load_settings", "redact_url"]

_QUEUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")  # as Dramatiq checks it
#: Settings that may hold a password: an error about them never shows their value.
_SECRET_FIELDS = frozenset(
    {"RABBITMQ_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"}
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOG_FORMATS = ("json", "console")

OtlpProtocol = Literal["grpc", "http/protobuf"]


class SettingsError(Exception):
    """The environment holds a value greenroom cannot run with (one line of text)."""


#: The shortest dead-letter retention the settings accept (a minute).
MIN_DEAD_LETTER_TTL_SECONDS = 60
#: The longest a result or a dead letter may be kept (a year): Redis and RabbitMQ take the TTL in ms.
MAX_RETENTION_SECONDS = 365 * 86400
#: The longest task time limit and retry backoff (a week, Dramatiq's own maximum backoff).
MAX_TASK_SECONDS = 7 * 86400
#: The span queue of a BatchSpanProcessor unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise (the SDK's).
DEFAULT_BSP_MAX_QUEUE_SIZE = 2048
#: The largest OTEL_BSP_* span count and the longest OTEL_BSP_* delay (ms) the settings accept.
MAX_BSP_SPANS = 1_000_000
MAX_BSP_MILLIS = 600_000
#: The highest x-max-priority RabbitMQ accepts on a queue.
MAX_QUEUE_PRIORITY = 255


class Settings(BaseSettings):
    """greenroom's configuration, read from the environment (and ``.env``).

    Durations are in seconds. Secrets (the URLs, which may carry passwords) are
    ``SecretStr``: ``repr()`` and :meth:`public_dict` never show them.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=True,
        validate_default=True,
        allow_inf_nan=False,  # every number a setting holds is finite
    )

    # Deployment ------------------------------------------------------------------
    ENVIRONMENT: Literal["development", "production"] = "development"

    # Backing services ---------------------------------------------------------
    RABBITMQ_URL: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    REDIS_URL: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    BROKER_CONFIRM_DELIVERY: bool = True
    SEND_RETRY_TIMEOUT_SECONDS: float = Field(default=10.0, ge=0, le=600)
    MAX_MESSAGE_BYTES: int = Field(default=1_048_576, ge=1024, le=134_217_728)
    DEAD_LETTER_TTL_SECONDS: int = Field(
        default=7 * 86400, ge=MIN_DEAD_LETTER_TTL_SECONDS, le=MAX_RETENTION_SECONDS
    )
    RESULT_TTL_SECONDS: int = Field(default=3600, gt=0, le=MAX_RETENTION_SECONDS)
    RESULT_STORE_RETRY_SECONDS: float = Field(default=30.0, ge=0, le=600)
    QUEUE_MAX_PRIORITIES: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)

    # Worker processes -----------------------------------------------------------
    WORKER_PROCESSES: int = Field(default=2, ge=1, le=256)
    WORKER_THREADS: int = Field(default=8, ge=1, le=1024)
    WORKER_QUEUES: Annotated[list[str], NoDecode] = Field(default_factory=list)
    WORKER_SHUTDOWN_TIMEOUT_SECONDS: float = Field(default=25.0, ge=0.001, le=3600)  # Dramatiq takes ms

    # Task defaults (a task contract may override them) -------------------------
    TASK_MAX_RETRIES: int = Field(default=3, ge=0, le=100)
    TASK_TIME_LIMIT_SECONDS: float = Field(default=300.0, ge=0.001, le=MAX_TASK_SECONDS)
    TASK_MIN_BACKOFF_SECONDS: float = Field(default=1.0, ge=0.001, le=MAX_TASK_SECONDS)
    TASK_MAX_BACKOFF_SECONDS: float = Field(default=300.0, ge=0.001, le=MAX_TASK_SECONDS)

    # Beat (greenroom beat: periodic tasks) -----------------------------------------
    BEAT_HEARTBEAT_SECONDS: int = Field(default=60, ge=0, le=86400)  # 0: no heartbeat schedule
    BEAT_CATCHUP_SECONDS: int = Field(default=300, ge=1, le=MAX_TASK_SECONDS)
    BEAT_LEASE_SECONDS: float = Field(default=5.0, ge=1, le=300)

    # Logs -----------------------------------------------------------------------
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    LOG_FORMAT: Literal["json", "console"] = "json"

    # Tracing (OpenTelemetry) -----------------------------------------------------
    TRACING_ENABLED: bool = True
    TRACING_NEW_TRACE_PER_TASK: bool = False
    TRACING_FLUSH_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=60)
    PROCESS_TYPE: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # OpenTelemetry's own variables, as its specification defines them. They are
    # declared here so that a bad value stops the process at start like any other
    # setting, and so that a value from .env is in effect too: greenroom hands them
    # to the SDK (the SDK itself reads only the process environment).
    OTEL_SDK_DISABLED: bool = False
    OTEL_SERVICE_NAME: str | None = None
    OTEL_EXPORTER_OTLP_PROTOCOL: OtlpProtocol = "http/protobuf"
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: OtlpProtocol | None = None
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: str | None = None
    OTEL_TRACES_SAMPLER: (
        Literal[
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ]
        | None
    ) = None
    OTEL_TRACES_SAMPLER_ARG: float | None = Field(default=None, ge=0, le=1)
    OTEL_BSP_SCHEDULE_DELAY: int | None = Field(default=None, ge=1, le=MAX_BSP_MILLIS)
    OTEL_BSP_EXPORT_TIMEOUT: int | None = Field(default=None, ge=1, le=MAX_BSP_MILLIS)
    OTEL_BSP_MAX_QUEUE_SIZE: int | None = Field(default=None, ge=1, le=MAX_BSP_SPANS)
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: int | None = Field(default=None, ge=1, le=MAX_BSP_SPANS)

    # Benchmark (greenroom bench sets it for the workers it starts) ---------------
    BENCH_RECORD_PATH: Path | None = None

    # Metrics and health server ------------------------------------------------
    METRICS_HOST: str = "127.0.0.1"
    METRICS_DIR: Path | None = None
    METRICS_PORT: int | None = Field(default=None, ge=1, le=65535)
    PORT: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("RABBITMQ_URL")
    @classmethod
    def _rabbitmq_url(cls, value: SecretStr) -> SecretStr:
        return check_url(value, ("amqp", "amqps"))

    @field_validator("RABBITMQ_URL")
    @classmethod
    def _rabbitmq_credentials(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.username is not None and parts.password is None:
            raise ValueError("a user name needs a password (amqp://user:password@host/vhost)")
        check_amqp_query(parts)
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        check_url(value, ("redis", "rediss"))
        parts = urlsplit(value.get_secret_value())
        check_redis_database(parts)
        check_redis_query(parts)
        return value

    @field_validator("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(SecretStr(value), ("http", "https"))
        return value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        # Known names in any case; anything else fails below with the raw value shown.
        known = isinstance(value, str) and value.upper() in _LOG_LEVELS
        return value.upper() if known else value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower_case_format(cls, value: Any) -> Any:
        known = isinstance(value, str) and value.lower() in _LOG_FORMATS
        return value.lower() if known else value

    @field_validator("WORKER_QUEUES", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [name for name in re.split(r"[,\s]+", value) if name]  # as `--queues` takes them
        for name in value:
            if not _QUEUE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid queue name")
        return value

    @field_validator("QUEUE_MAX_PRIORITIES", mode="before")
    @classmethod
    def _queue_priorities(cls, value: Any) -> Any:
        return parse_queue_priorities(value) if isinstance(value, str) else value

    @field_validator("QUEUE_MAX_PRIORITIES")
    @classmethod
    def _priority_ranges(cls, value: dict[str, int]) -> dict[str, int]:
        for name, maximum in value.items():
            if not _QUEUE_NAME.fullmatch(name) or name.endswith((".DQ", ".XQ")):
                raise ValueError(f"{name!r} is not a valid queue name")
            if not 1 <= maximum <= MAX_QUEUE_PRIORITY:
                raise ValueError(f"{name}: the maximum priority must be from 1 to {MAX_QUEUE_PRIORITY}")
        return value

    @model_validator(mode="after")
    def _no_default_credentials_in_production(self) -> Settings:
        if self.ENVIRONMENT == "production" and rabbitmq_credentials(self.rabbitmq_url) == (
            RABBITMQ_DEFAULT_CREDENTIALS
        ):
            raise ValueError(
                "RABBITMQ_URL: the default guest/guest credentials (also what a URL without "
                "user:password@ logs in with) are refused when ENVIRONMENT=production"
            )
        return self

    @model_validator(mode="after")
    def _export_batch_fits_the_queue(self) -> Settings:
        queue = self.OTEL_BSP_MAX_QUEUE_SIZE or DEFAULT_BSP_MAX_QUEUE_SIZE
        if (self.OTEL_BSP_MAX_EXPORT_BATCH_SIZE or 0) > queue:
            raise ValueError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({queue})"
            )
        return self

    @model_validator(mode="after")
    def _catchup_outlasts_a_failover(self) -> Settings:
        if self.BEAT_CATCHUP_SECONDS < 2 * self.BEAT_LEASE_SECONDS:
            raise ValueError(
                "BEAT_CATCHUP_SECONDS: must be at least twice BEAT_LEASE_SECONDS "
                f"({2 * self.BEAT_LEASE_SECONDS:g}), or the ticks due during a failover are counted missed"
            )
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.TASK_MIN_BACKOFF_SECONDS > self.TASK_MAX_BACKOFF_SECONDS:
            raise ValueError("TASK_MIN_BACKOFF_SECONDS: must not exceed TASK_MAX_BACKOFF_SECONDS")
        return self

    # Derived values ---------------------------------------------------------------
    @property
    def metrics_port(self) -> int:
        """METRICS_PORT, else $PORT (set per process by Procfile runners), else 9300."""
        return self.METRICS_PORT or self.PORT or 9300

    @property
    def otlp_traces_protocol(self) -> OtlpProtocol:
        """The per-signal protocol variable wins over the general one, as in the SDK."""
        return self.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or self.OTEL_EXPORTER_OTLP_PROTOCOL

    @property
    def otlp_traces_endpoint(self) -> str:
        """Where spans go: the per-signal endpoint as given, else the general one plus
        ``/v1/traces`` (OTLP/HTTP) or as given (gRPC), else the SDK's local default."""
        if self.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:
            return self.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
        grpc = self.otlp_traces_protocol == "grpc"
        base = self.OTEL_EXPORTER_OTLP_ENDPOINT or (
            "http://localhost:4317" if grpc else "http://localhost:4318"
        )
        return base if grpc else f"{base.rstrip('/')}/v1/traces"

    @property
    def tracing_active(self) -> bool:
        return self.TRACING_ENABLED and not self.OTEL_SDK_DISABLED

    @property
    def rabbitmq_url(self) -> str:
        return self.RABBITMQ_URL.get_secret_value()

    @property
    def redis_url(self) -> str:
        return self.REDIS_URL.get_secret_value()

    def secrets(self) -> set[str]:
        """The passwords the URL settings hold, as written and percent-decoded (masked in logs)."""
        urls = (
            self.rabbitmq_url,
            self.redis_url,
            self.OTEL_EXPORTER_OTLP_ENDPOINT,
            self.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        )
        passwords = {urlsplit(url).password for url in urls if url}
        return {form for password in passwords if password for form in (password, unquote(password))}

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with secrets redacted, for `greenroom config`."""
        shown = self.model_dump(mode="json")
        shown["RABBITMQ_URL"] = redact_url(self.rabbitmq_url)
        shown["REDIS_URL"] = redact_url(self.redis_url)
        shown["METRICS_PORT"] = self.metrics_port
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            if shown[name]:
                shown[name] = redact_url(shown[name])
        return shown


def parse_queue_priorities(text: str) -> dict[str, int]:
    """QUEUE_MAX_PRIORITIES as written, ``queue=maximum`` pairs separated by commas or spaces.

    >>> parse_queue_priorities("default=9, reports=3")
    {'default': 9, 'reports': 3}
    >>> parse_queue_priorities("default")
    Traceback (most recent call last):
      ...
    ValueError: 'default' is not queue=maximum (e.g. default=9,reports=3)
    """
    priorities: dict[str, int] = {}
    for pair in (item for item in re.split(r"[,\s]+", text) if item):
        name, equals, maximum = pair.partition("=")
        if not equals or not (maximum.isascii() and maximum.isdigit()):
            raise ValueError(f"{pair!r} is not queue=maximum (e.g. default=9,reports=3)")
        if name in priorities:
            raise ValueError(f"queue {name!r} is given twice")
        priorities[name] = int(maximum) if len(maximum) <= 4 else MAX_QUEUE_PRIORITY + 1  # out of range
    return priorities


def _describe(error: ErrorDetails) -> str:
    name = ".".join(str(part) for part in error["loc"])
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not name:
        return reason  # a rule across variables: the reason names them
    if name in _SECRET_FIELDS:
        return f"{name}: {reason}"
    return f"{name}={error['input']!r}: {reason}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment, raising SettingsError on a bad value.

    >>> load_settings(WORKER_THREADS=4).WORKER_THREADS
    4
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors(include_url=False))
        raise SettingsError(f"invalid setting {problems}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded once (use load_settings() in tests)."""
    return load_settings()
