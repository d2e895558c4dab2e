"""No log line shows a URL's password, whatever characters the password holds."""

from __future__ import annotations

import logging
import string
import sys
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from shared import cli
from shared.logging import build_formatter
from shared.secret_masking import mask_configured_secrets, mask_secrets
from shared.settings import SettingsError, load_settings

PIECES = ("Sup3r", "S3cret")
#: Every printable ASCII character that is not a letter or digit, and a few that URLs reserve together.
SPECIALS = [c for c in string.punctuation] + ["/?#", "@@", "//", ":/@", "%2F/"]


def _password(special: str) -> str:
    return f"{PIECES[0]}{special}{PIECES[1]}"


def _shows_the_password(text: str) -> bool:
    return any(piece in text for piece in PIECES)


def _urls(special: str) -> list[str]:
    """The password written raw (as a user may paste it) and percent-encoded, in each scheme."""
    password = _password(special)
    return [
        f"{scheme}://app:{written}@127.0.0.1:5672/x"
        for scheme in ("amqp", "redis", "http")
        for written in (password, quote(password, safe=""))
    ]


@pytest.mark.parametrize("special", SPECIALS)
def test_mask_secrets_masks_the_whole_password(special: str) -> None:
    for url in _urls(special):
        masked = mask_secrets(f"connecting to {url} failed")
        assert not _shows_the_password(masked), masked
        assert masked.endswith("@127.0.0.1:5672/x failed"), masked


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("special", SPECIALS)
def test_a_configured_url_is_masked_in_every_log_line(fmt: str, special: str) -> None:
    """Each URL the settings accept, in a message, an extra field and an exception."""
    formatter = build_formatter(fmt)  # type: ignore[arg-type]
    for url in _urls(special):
        configured = _accepted(url)
        for record in _records(configured) if configured else []:
            line = formatter.format(record)
            assert not _shows_the_password(line), line


def _accepted(url: str) -> str | None:
    """``url`` as the settings hold it, or None if they refuse it (without showing the password)."""
    name = "REDIS_URL" if url.startswith("redis") else "RABBITMQ_URL"
    try:
        settings = load_settings(_env_file=None, **{name: url.replace("http", "amqp", 1)})
    except SettingsError as error:
        refusal = str(error)
    else:
        return settings.rabbitmq_url if name == "RABBITMQ_URL" else settings.redis_url
    assert not _shows_the_password(refusal), refusal
    return None


def _records(url: str) -> list[logging.LogRecord]:
    plain = logging.makeLogRecord({"name": "greenroom", "msg": "connect %s", "args": (url,)})
    extra = logging.makeLogRecord({"name": "greenroom", "msg": "connect", "url": url})
    try:
        raise ConnectionError(f"could not reach {url}")
    except ConnectionError as error:
        failed = logging.makeLogRecord(
            {"name": "greenroom", "msg": "failed", "exc_info": (type(error), error, error.__traceback__)}
        )
    return [plain, extra, failed]


def test_whitespace_in_a_url_is_refused_without_showing_it() -> None:
    """A log line's URL masking ends at whitespace, so settings refuse it (percent-encode: %20)."""
    with pytest.raises(SettingsError, match="percent-encode") as refused:
        load_settings(_env_file=None, RABBITMQ_URL=f"amqp://app:{PIECES[0]} {PIECES[1]}@127.0.0.1/x")
    assert not _shows_the_password(str(refused.value))


def test_urls_without_passwords_are_untouched() -> None:
    line = "export to http://127.0.0.1:4318/v1/traces and amqp://rabbit:5672/%2F failed"
    assert mask_secrets(line) == line


@pytest.fixture
def no_configured_secrets() -> Iterator[None]:
    mask_configured_secrets([])
    yield
    mask_configured_secrets([])


@pytest.mark.parametrize("special", [" ", '"', "\\", "é", "%"])
def test_configured_passwords_are_masked_outside_urls_too(no_configured_secrets: None, special: str) -> None:
    """As written in the URL (percent-encoded) and decoded, also inside a JSON line."""
    password = _password(special)
    settings = load_settings(_env_file=None, RABBITMQ_URL=f"amqp://app:{quote(password, safe='')}@rabbit/x")
    mask_configured_secrets(settings.secrets())
    for msg in ("login %s refused", "login %r refused"):
        record = logging.makeLogRecord({"name": "pika", "msg": msg, "args": (password,)})
        for line in (build_formatter("json").format(record), build_formatter("console").format(record)):
            assert not _shows_the_password(line), line
    assert mask_secrets(f"{quote(password, safe='')} and {password}") == "*** and ***"


def test_short_secrets_are_masked_only_inside_urls(no_configured_secrets: None) -> None:
    mask_configured_secrets(["guest", "pw"])
    assert mask_secrets("guest login amqp://guest:guest@rabbit/x") == "guest login amqp://guest:***@rabbit/x"


def test_the_cli_masks_the_configured_passwords(
    no_configured_secrets: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = _password(" ")
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://app:{quote(password, safe='')}@rabbit/x")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    try:
        assert cli.main(["config"]) == 0
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)
    assert not _shows_the_password(capsys.readouterr().out)
    assert mask_secrets(f"login {password} refused") == "login *** refused"
