"""The only place greenroom reaches into the standard library's private parts.

Written against CPython 3.11 (tested with 3.11); ``tests/unit/test_stdlib_compat.py``
fails when Python changes what this module relies on:

- ``json.encoder.c_make_encoder``: the C encoder that ``JSONEncoder.iterencode``
  builds anew for every call. :func:`scalar_dict_encoder` builds one once, for
  dicts whose values are all str, int, float, bool or None (they hold no
  container, so no circular-reference check is needed).
- ``logging._srcfile``: when None, ``Logger._log`` does not look up the calling
  file, line and function of every record (the logging HOWTO's "Optimization"
  section documents this). :func:`skip_caller_lookup` sets it.

Where one is missing, the function falls back to the public path (``encoder.encode``;
the caller lookup stays on) and says so once, loudly
(:func:`observability.fallbacks.report_fallback`).

>>> encode = scalar_dict_encoder(json.JSONEncoder(ensure_ascii=False))
>>> encode({"level": "INFO", "retries": 0, "ok": True, "took": None})
'{"level": "INFO", "retries": 0, "ok": true, "took": null}'
"""

from __future__ import annotations

import json
import json.encoder
import logging
import sys
from collections.abc import Callable
from typing import Any

from observability.fallbacks import report_fallback

#: The private names relied on (tests break them to check the fallbacks).
C_MAKE_ENCODER = "c_make_encoder"
SRCFILE = "_srcfile"


def scalar_dict_encoder(encoder: json.JSONEncoder) -> Callable[[dict[str, Any]], str]:
    """A function encoding a dict of scalars as ``encoder.encode`` does, with one C encoder
    built once; ``encoder.encode`` itself, reported once, without the C extension."""
    make_encoder = getattr(json.encoder, C_MAKE_ENCODER, None)
    if make_encoder is None:
        report_fallback("json line encoding", f"Python {_python()} has no json.encoder.{C_MAKE_ENCODER}")
        return encoder.encode
    basestring = (
        json.encoder.encode_basestring_ascii if encoder.ensure_ascii else json.encoder.encode_basestring
    )
    encode_c = make_encoder(
        None,  # no circular-reference markers: only ever given dicts of scalars
        encoder.default,
        basestring,
        encoder.indent,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )
    return lambda scalars: "".join(encode_c(scalars, 0))


def skip_caller_lookup() -> None:
    """Have logging skip looking up each record's calling file, line and function (records
    then show ``(unknown file)``); reported once where Python has no such switch."""
    if not hasattr(logging, SRCFILE):
        report_fallback("log caller lookup", f"Python {_python()} has no logging.{SRCFILE}")
        return
    setattr(logging, SRCFILE, None)


def _python() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])
