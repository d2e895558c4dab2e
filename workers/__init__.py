"""The module a worker process loads: the broker, then every actor.

``greenroom worker`` hands ``workers:broker`` to Dramatiq's CLI. Importing this
package builds the broker from the settings and installs it as Dramatiq's
global broker, then imports every module of the package, each declaring its
actors with :func:`workers.actor.implements`: a new module here is all it
takes for a worker to run its tasks.
"""

from __future__ import annotations

import importlib
import pkgutil

from shared.broker import install_broker
from shared.settings import get_settings

broker = install_broker(get_settings())

# After the broker: an actor is declared on the global broker.
for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)

__all__ = ["broker"]
