"""The only place greenroom reaches into pika's private parts.

Written against pika>=1.3,<1.5 and tested with pika 1.4.4. Each function names
the private attribute it reads; when a pika release moves it, the function falls
back to what the public API offers and says so once, loudly
(:func:`observability.fallbacks.report_fallback`). ``tests/integration/test_pika_compat.py``
fails when pika changes what this module relies on.

What it relies on: a ``BlockingChannel`` (or ``BlockingConnection``) wraps pika's
asynchronous ``Channel`` (``Connection``) in its private ``_impl`` attribute, whose
``basic_publish`` only buffers the frames and whose ``confirm_delivery`` takes a
callback per ack or nack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


#: The private attribute of pika's blocking channel that holds its asynchronous channel.
IMPL_ATTRIBUTE = "_impl"


def buffering_channel(channel: Any) -> Any:
    """The channel to hand messages that should wait for the next write: pika's ``Channel``
    below the ``BlockingChannel`` ``channel`` (its private ``_impl``), whose ``basic_publish``
    only buffers the frames until the blocking channel or connection next writes or reads.
    ``channel`` itself (each message written at once), reported once as a fallback, if that
    is missing.
    """
    impl = getattr(channel, IMPL_ATTRIBUTE, None)
    if not callable(getattr(impl, BUFFERED_PUBLISH, None)):
        report_fallback(
            "pika frame buffering",
            f"pika {_pika_version()} has no BlockingChannel._impl.{BUFFERED_PUBLISH}",
        )
        return channel
    return impl


#: The buffering method of pika's asynchronous channel.
BUFFERED_PUBLISH = "basic_publish"


def pipelined_confirms(
    channel: Any, *, on_settled: Callable[[Any], None], on_selected: Callable[[Any], None]
) -> bool:
    """Put the ``BlockingChannel`` ``channel`` in confirm mode with a callback per ack or nack
    RabbitMQ sends (``on_settled(frame)``, ``frame.method`` a ``Basic.Ack`` or ``Basic.Nack``)
    and ``on_selected(frame)`` once the mode is on; True if done.

    pika's public ``BlockingChannel.confirm_delivery`` makes every ``basic_publish`` wait
    for its own confirm instead; its private ``_impl.confirm_delivery`` takes the
    callbacks. False, reported once as a fallback, if that is missing: the caller then
    publishes through the public one-by-one path.
    """
    confirm_delivery = getattr(getattr(channel, IMPL_ATTRIBUTE, None), "confirm_delivery", None)
    if not callable(confirm_delivery):
        report_fallback(
            "pika pipelined confirms",
            f"pika {_pika_version()} has no BlockingChannel._impl.confirm_delivery",
        )
        return False
    confirm_delivery(ack_nack_callback=on_settled, callback=on_selected)
    return True
