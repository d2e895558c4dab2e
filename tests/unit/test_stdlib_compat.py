"""shared.stdlib_compat against the running Python: fails when json or logging change what it relies on."""

from __future__ import annotations

import inspect
import json
import json.encoder
import logging
import math
import os
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from observability.fallbacks import reported
from shared import stdlib_compat
from shared.stdlib_compat import scalar_dict_encoder, skip_caller_lookup

LINES = [
    {"level": "INFO", "logger": "greenroom.task", "message": "task succeeded", "retries": 0},
    {"message": 'quotes " and \\ and \n and \x00 and é and 😀', "ok": True, "none": None},
    {"float": 0.1, "big": 1e300, "small": -5e-324, "int": 2**70, "nan": math.nan, "inf": -math.inf},
    {},
]


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_the_scalar_encoder_writes_what_the_encoders_own_encode_writes(ensure_ascii: bool) -> None:
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii)
    encode = scalar_dict_encoder(encoder)
    assert encode is not encoder.encode  # the C encoder, built once
    for line in LINES:
        assert encode(line) == encoder.encode(line)


def test_json_still_builds_its_c_encoder_where_the_adapter_finds_it() -> None:
    assert callable(json.encoder.c_make_encoder)
    assert "c_make_encoder(" in inspect.getsource(json.JSONEncoder.iterencode)


@pytest.fixture
def srcfile_restored() -> Iterator[None]:
    """logging's caller lookup on, as Python starts (configure_logging in another test turns it off)."""
    saved = logging._srcfile
    logging._srcfile = os.path.normcase(logging.addLevelName.__code__.co_filename)
    yield
    logging._srcfile = saved


def _record_of_a_call(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    with caplog.at_level(logging.INFO, "greenroom.test"):
        logging.getLogger("greenroom.test").info("here")
    return caplog.records[-1]


def test_skipping_the_caller_lookup_leaves_records_without_file_and_line(
    srcfile_restored: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert _record_of_a_call(caplog).pathname == __file__  # looked up, as by default
    skip_caller_lookup()
    record = _record_of_a_call(caplog)
    assert (record.pathname, record.lineno, record.funcName) == ("(unknown file)", 0, "(unknown function)")
    assert "caller lookup" not in " ".join(reported())


def test_without_the_c_encoder_the_public_encode_is_used_and_said_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stdlib_compat, "C_MAKE_ENCODER", "c_make_encoder_moved")
    monkeypatch.setattr("observability.fallbacks._reported", {})
    encoder = json.JSONEncoder(ensure_ascii=False)

    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        encode = scalar_dict_encoder(encoder)

    assert encode == encoder.encode
    assert encode(LINES[1]) == json.dumps(LINES[1], ensure_ascii=False)
    [line] = caplog.messages
    assert line.startswith("json line encoding: fast path unavailable")
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "json line encoding"}) == 1


def test_without_the_switch_the_caller_lookup_stays_on_and_is_said_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, srcfile_restored: None
) -> None:
    monkeypatch.setattr(stdlib_compat, "SRCFILE", "_srcfile_moved")
    monkeypatch.setattr("observability.fallbacks._reported", {})

    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        skip_caller_lookup()

    assert not hasattr(logging, "_srcfile_moved")
    assert _record_of_a_call(caplog).pathname == __file__
    assert any(m.startswith("log caller lookup: fast path unavailable") for m in caplog.messages)
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "log caller lookup"}) == 1
