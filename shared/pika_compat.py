"""The only place greenroom reaches into pika's private parts.

Written against pika>=1.3,<1.5 and tested with pika 1.4.4. Each function names
the private attribute it reads; when a pika release moves it, the function falls
back to what the public API offers and says so once, loudly
(:func:`observability.fallbacks.report_fallback`). ``tests/unit/test_pika_compat.py``
fails when pika changes what this module relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from observability.fallbacks import report_fallback


def server_properties(connection: Any) -> Mapping[str, Any]:
    """The properties RabbitMQ announced when ``connection`` (a ``pika.BlockingConnection``)
    opened: ``product``, ``version``, ``capabilities`` ... (text as str or bytes, as pika
    decoded it). pika keeps them on its private ``_impl`` connection; an empty
    mapping, reported once as a fallback, if that attribute is missing.
    """
    properties = getattr(getattr(connection, "_impl", None), "server_properties", None)
    if not isinstance(properties, Mapping):
        report_fallback(
            "pika server properties",
            f"pika {_pika_version()} has no BlockingConnection._impl.server_properties mapping",
        )
        return {}
    return properties


def _pika_version() -> str:
    import pika

    return str(getattr(pika, "__version__", "?"))
