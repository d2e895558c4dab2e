"""``greenroom healthcheck``: exit 0 if this host's worker answers /healthz (Docker's HEALTHCHECK).

$ greenroom healthcheck
healthy (http://127.0.0.1:9300/healthz)
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from typing import Any

from shared.cli.arguments import add_command
from shared.cli.output import EXIT_FAILED, EXIT_OK
from shared.settings import Settings

#: Seconds the health check waits for the worker's answer.
HEALTHCHECK_TIMEOUT_SECONDS = 5.0


def register(commands: Any) -> None:
    healthcheck = add_command(
        commands,
        "healthcheck",
        "Exit 0 if this host's worker answers /healthz on METRICS_PORT (for Docker's HEALTHCHECK).",
        "greenroom healthcheck",
    )
    healthcheck.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """GET /healthz of the worker on this host."""
    url = f"http://127.0.0.1:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTHCHECK_TIMEOUT_SECONDS) as response:
            print(f"healthy ({url})")
            return EXIT_OK if response.status == 200 else EXIT_FAILED
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy ({url}): {error}")
        return EXIT_FAILED
