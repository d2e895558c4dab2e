"""Names and attributes of greenroom's spans, as the OpenTelemetry messaging conventions define them.

A PRODUCER span is ``send <queue>``, a CONSUMER span ``process <queue>``, both with
messaging.system=rabbitmq, the operation, the destination and its routing key;
greenroom adds the Dramatiq actor and retry count, and on a PRODUCER span the
message's priority and delay (:func:`send_option_attributes`). The attributes every span on a
queue shares are built once per queue and copied for each span.

>>> shapes = SpanShapes()
>>> name, attributes = shapes.consumer("default")
>>> name, attributes["messaging.operation.type"], attributes["messaging.system"]
('process default', 'process', 'rabbitmq')
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dramatiq.common import q_name
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Span, Status, StatusCode

from observability.opentelemetry_compat import (
    MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_SYSTEM,
    OPERATION_TYPE_PROCESS,
    OPERATION_TYPE_SEND,
    RABBITMQ,
)

#: Span attributes that the messaging conventions do not define.
ACTOR_ATTRIBUTE = "dramatiq.actor.name"
RETRIES_ATTRIBUTE = "dramatiq.message.retries"
SKIPPED_ATTRIBUTE = "dramatiq.message.skipped"
CANCELLED_ATTRIBUTE = "greenroom.task.cancelled"
#: A workflow step's workflow (its id, its kind: pipeline or group) and its position in it.
WORKFLOW_ID_ATTRIBUTE = "greenroom.workflow.id"
WORKFLOW_KIND_ATTRIBUTE = "greenroom.workflow.kind"
WORKFLOW_STEP_ATTRIBUTE = "greenroom.workflow.step"
PRIORITY_ATTRIBUTE = "dramatiq.message.broker_priority"
DELAY_ATTRIBUTE = "dramatiq.message.delay_ms"
#: A beat tick's schedule and its scheduled time (ISO 8601, UTC).
SCHEDULE_NAME_ATTRIBUTE = "greenroom.schedule.name"
SCHEDULED_AT_ATTRIBUTE = "greenroom.schedule.scheduled_at"

#: The message options a PRODUCER span records: Dramatiq's priority, and when a delayed
#: message is due (``shared.delays.DUE_AT_OPTION``, epoch ms).
PRIORITY_OPTION = "broker_priority"
DUE_AT_OPTION = "greenroom_due_at"
#: The message option of a beat tick: ``{"name": schedule, "at": scheduled epoch ms}``.
SCHEDULE_OPTION = "greenroom_schedule"


#: messaging.operation.type for each operation greenroom traces.
OPERATION_TYPES = {"send": OPERATION_TYPE_SEND, "process": OPERATION_TYPE_PROCESS}


class SpanShapes:
    """The name and a fresh copy of the shared attributes of a span, by operation and queue."""

    def __init__(self) -> None:
        self._shared: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def producer(self, routing_key: str, *, message_id: str, actor_name: str) -> tuple[str, dict[str, Any]]:
        """``send <queue>`` for one message published with ``routing_key``."""
        name, attributes = self._shape("send", routing_key)
        attributes[MESSAGING_MESSAGE_ID] = message_id
        attributes[ACTOR_ATTRIBUTE] = actor_name
        return name, attributes

    def batch(self, queue_name: str, count: int) -> tuple[str, dict[str, Any]]:
        """``send <queue>`` for ``count`` messages published together."""
        name, attributes = self._shape("send", queue_name)
        attributes[MESSAGING_BATCH_MESSAGE_COUNT] = count
        return name, attributes

    def consumer(self, queue_name: str) -> tuple[str, dict[str, Any]]:
        """``process <queue>`` (the caller adds the message's own attributes)."""
        return self._shape("process", queue_name)

    def _shape(self, operation: str, routing_key: str) -> tuple[str, dict[str, Any]]:
        key = (operation, routing_key)
        shape = self._shared.get(key)
        if shape is None:
            queue = q_name(routing_key)
            shape = self._shared[key] = (
                f"{operation} {queue}",
                {
                    MESSAGING_SYSTEM: RABBITMQ,
                    MESSAGING_OPERATION_TYPE: OPERATION_TYPE_SEND
                    if operation == "send"
                    else OPERATION_TYPE_PROCESS,
                    MESSAGING_OPERATION_NAME: operation,
                    MESSAGING_DESTINATION_NAME: queue,
                    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: routing_key,
                },
            )
        return shape[0], dict(shape[1])


def send_option_attributes(options: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """A published message's priority and, if it is not due yet, its delay in ms.

    >>> send_option_attributes({"broker_priority": 5, "greenroom_due_at": 31_000}, now_ms=1_000)
    {'dramatiq.message.broker_priority': 5, 'dramatiq.message.delay_ms': 30000}
    """
    attributes: dict[str, Any] = {}
    priority, due_at = options.get(PRIORITY_OPTION), options.get(DUE_AT_OPTION)
    if isinstance(priority, int):
        attributes[PRIORITY_ATTRIBUTE] = priority
    if isinstance(due_at, int) and due_at > now_ms:
        attributes[DELAY_ATTRIBUTE] = due_at - now_ms
    attributes.update(schedule_attributes(options))
    return attributes


def schedule_attributes(options: Mapping[str, Any]) -> dict[str, Any]:
    """A beat tick's schedule name and scheduled time (nothing for another message).

    >>> schedule_attributes({"greenroom_schedule": {"name": "heartbeat", "at": 1_796_168_700_000}})
    {'greenroom.schedule.name': 'heartbeat', 'greenroom.schedule.scheduled_at': '2026-12-01T23:45:00Z'}
    """
    schedule = options.get(SCHEDULE_OPTION)
    if not isinstance(schedule, dict):
        return {}
    name, at_ms = schedule.get("name"), schedule.get("at")
    if not isinstance(name, str) or isinstance(at_ms, bool) or not isinstance(at_ms, int):
        return {}
    try:  # read before the message's options are checked: any integer may come
        at = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return {}
    return {SCHEDULE_NAME_ATTRIBUTE: name[:100], SCHEDULED_AT_ATTRIBUTE: at}


def record_error(span: Span, error: BaseException) -> None:
    """The exception event, error.type and an ERROR status on ``span``."""
    if not span.is_recording():
        return
    span.record_exception(error)
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
