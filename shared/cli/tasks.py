"""``greenroom tasks``: list the task contracts: queue, arguments and effective policies.

Each argument shows its type, whether it is required, its default and its
bounds (from the contract's pydantic model); each policy its effective value
and where that comes from: ``contract``, the setting it falls back to (with the
value this process's settings give it), or ``default`` (nothing sets it). Plain
text within 80 columns, or ``--json``::

    $ greenroom tasks echo
    echo  (queue default)
      Return `payload` after `delay_ms` of simulated work (checks and tests).
      arguments:
        payload             JsonValue, required
        delay_ms            integer, default 0, >= 0, <= 600000
      policies:
        max_retries         3                              TASK_MAX_RETRIES
        ...

Exit codes: 0, or 2 for a task name no contract has (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from shared.cli.arguments import add_command
from shared.cli.output import EXIT_OK, usage_error
from shared.settings import Settings
from shared.task_policies import as_json, describe, effective_policy
from shared.tasks import TaskContract, all_tasks

#: The width of the text listing.
WIDTH = 80
NAME_COLUMN = 20
VALUE_COLUMN = 30  # 4 + 20 + 30 + 1 + 24 (TASK_MIN_BACKOFF_SECONDS) = 79 columns

#: JSON-schema keywords shown as an argument's bounds, and how.
BOUNDS = {
    "minimum": ">= {}",
    "exclusiveMinimum": "> {}",
    "maximum": "<= {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length >= {}",
    "maxLength": "length <= {}",
    "minItems": "items >= {}",
    "maxItems": "items <= {}",
    "pattern": "matching {}",
    "multipleOf": "multiple of {}",
}


def register(commands: Any) -> None:
    tasks = add_command(
        commands,
        "tasks",
        "List the task contracts: queue, arguments and effective policies (contract, else settings).",
        "greenroom tasks --json",
    )
    tasks.add_argument("names", nargs="*", metavar="TASK", help="only these tasks (default: every one)")
    tasks.add_argument("--json", action="store_true", help="print a JSON array instead of text")
    tasks.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the contracts asked for, as text or JSON."""
    contracts = all_tasks()
    if unknown := [name for name in args.names if name not in {c.name for c in contracts}]:
        known = ", ".join(contract.name for contract in contracts)
        return usage_error(f"unknown task {', '.join(map(repr, unknown))} (tasks: {known})")
    if args.names:
        contracts = [contract for contract in contracts if contract.name in args.names]
    if args.json:
        print(json.dumps([contract_json(contract, settings) for contract in contracts], indent=2))
    else:
        print("\n\n".join(contract_text(contract, settings) for contract in contracts))
    return EXIT_OK


def arguments_of(contract: TaskContract) -> list[dict[str, Any]]:
    """Each argument: name, type, required, default (when not required), bounds, description."""
    schema = contract.arguments.model_json_schema()
    required = set(schema.get("required", []))
    described = []
    for name, field in schema.get("properties", {}).items():
        argument: dict[str, Any] = {"name": name, "type": type_of(field), "required": name in required}
        if name not in required:
            argument["default"] = field.get("default")
        argument["bounds"] = {key: field[key] for key in BOUNDS if key in field}
        if "description" in field:
            argument["description"] = field["description"]
        described.append(argument)
    return described


def type_of(field: dict[str, Any]) -> str:
    """A JSON-schema property's type in a few words.

    >>> type_of({"type": "integer"}), type_of({"anyOf": [{"type": "string"}, {"type": "null"}]})
    ('integer', 'string | null')
    >>> type_of({"enum": ["a", "b"], "type": "string"}), type_of({})
    ("one of 'a', 'b'", 'any')
    """
    if "enum" in field:
        return "one of " + ", ".join(repr(value) for value in field["enum"])
    if "const" in field:
        return repr(field["const"])
    if "anyOf" in field:
        return " | ".join(type_of(option) for option in field["anyOf"])
    if "$ref" in field:
        return str(field["$ref"]).rsplit("/", 1)[-1]
    kind = field.get("type")
    if kind == "array" and isinstance(field.get("items"), dict):
        return f"array of {type_of(field['items'])}"
    return str(kind) if kind else "any"


def contract_json(contract: TaskContract, settings: Settings) -> dict[str, Any]:
    """One contract as ``--json`` prints it."""
    return {
        "name": contract.name,
        "queue": contract.queue,
        "description": contract.description,
        "arguments": arguments_of(contract),
        "policies": {
            field: {"value": as_json(policy.value), "source": policy.source}
            for field, policy in effective_policy(contract, settings).items()
        },
    }


def contract_text(contract: TaskContract, settings: Settings) -> str:
    """One contract as the text listing shows it, no line longer than :data:`WIDTH`."""
    lines = [f"{contract.name}  (queue {contract.queue})"]
    lines += textwrap.wrap(contract.description, WIDTH, initial_indent="  ", subsequent_indent="  ")
    lines.append("  arguments:")
    for argument in arguments_of(contract):
        facts = [argument["type"]]
        facts.append("required" if argument["required"] else f"default {json.dumps(argument['default'])}")
        facts += [BOUNDS[key].format(value) for key, value in argument["bounds"].items()]
        lines += _row(argument["name"], ", ".join(facts))
    lines.append("  policies:")
    for field, policy in effective_policy(contract, settings).items():
        value = describe(field, policy.value)
        lines += _row(
            field, f"{value:<{VALUE_COLUMN}} {policy.source}" if len(value) <= VALUE_COLUMN else value
        )
        if len(value) > VALUE_COLUMN:
            lines.append(" " * (4 + NAME_COLUMN) + f"({policy.source})")
    return "\n".join(lines)


def _row(name: str, text: str) -> list[str]:
    indent = " " * (4 + NAME_COLUMN)
    first = f"    {name:<{NAME_COLUMN}}"
    if len(first) > len(indent):  # a long name: its text on the next lines
        return [first.rstrip(), *textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent)]
    wrapped = textwrap.wrap(text, WIDTH - len(indent)) or [""]
    return [first + wrapped[0], *(indent + line for line in wrapped[1:])]
