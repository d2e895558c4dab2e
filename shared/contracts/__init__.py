"""greenroom's task contracts, one module per group of tasks.

Importing this package imports every module in it, and declaring a
:class:`~shared.tasks.TaskContract` registers it, so a new module here is all
it takes for ``get_task``, ``send`` and ``greenroom worker`` to know its
tasks. :mod:`shared.tasks` imports this package the first time its task table
is read.

>>> from shared.tasks import TASKS
>>> sorted(name for name in TASKS if name in ("echo", "reports.build"))
['echo', 'reports.build']
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
