"""``greenroom config``: print the effective settings as JSON, secrets redacted.

$ RABBITMQ_URL=amqp://app:pw@rabbit:5672/%2F greenroom config
{
  ...
  "RABBITMQ_URL": "amqp://app:***@rabbit:5672/%2F",
  ...
}
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.cli.arguments import add_command
from shared.cli.output import EXIT_OK
from shared.settings import Settings
from shared.strict_json import json_safe


def register(commands: Any) -> None:
    config = add_command(
        commands,
        "config",
        "Print the effective settings as JSON, secrets redacted.",
        "RABBITMQ_URL=amqp://app:pw@rabbit:5672/%%2F greenroom config",
    )
    config.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings, secrets redacted."""
    print(json.dumps(json_safe(settings.public_dict()), indent=2, sort_keys=True, allow_nan=False))
    return EXIT_OK
