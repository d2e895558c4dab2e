"""The module a worker process loads: the broker, then every actor.

``greenroom worker`` hands ``workers:broker`` to Dramatiq's CLI. Importing this
package builds the broker from the settings and declares the actors; add a
module of actors here and import it below.
"""

from __future__ import annotations

from shared.broker import install_broker
from shared.settings import get_settings

broker = install_broker(get_settings())

from workers import diagnostics, reports  # noqa: E402  (actors need the broker first)

__all__ = ["broker", "diagnostics", "reports"]
