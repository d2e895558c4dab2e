"""shared.pika_compat against the installed pika and a real RabbitMQ: fails when pika moves
what the adapter reads."""

from __future__ import annotations

import pika

from observability.fallbacks import reported
from shared.pika_compat import server_properties


def test_a_real_connection_keeps_rabbitmqs_server_properties_where_the_adapter_reads_them(
    rabbitmq_url: str,
) -> None:
    # Given
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        # When
        properties = server_properties(connection)

        # Then: the private attribute exists and holds what RabbitMQ announced
        assert isinstance(connection._impl.server_properties, dict)
        assert properties["product"] in ("RabbitMQ", b"RabbitMQ")  # pika decodes text, or not
        assert properties["version"]
    finally:
        connection.close()
    assert "pika server properties" not in reported()


def test_a_connection_without_the_attribute_falls_back_loudly_to_no_properties() -> None:
    class Connection:  # what a pika that moved ``_impl`` would hand back
        pass

    assert server_properties(Connection()) == {}
    assert "BlockingConnection._impl.server_properties" in reported()["pika server properties"]
