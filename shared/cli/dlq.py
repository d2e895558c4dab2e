"""``greenroom dlq``: inspect, replay or purge dead-lettered messages (``<queue>.XQ``).

    $ greenroom dlq list --queue default --limit 20
    default.XQ: 1 dead letter(s)
      0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41  fail  ...  42s  {"reason": "disk on fire"}  DiagnosticFailure: ...
    $ greenroom dlq replay --queue default --id 0c1f5a3e --fresh-retries
    default.XQ: replayed 1 to default
    $ greenroom dlq purge --queue default --yes
    default.XQ: purged 0

An id given to ``replay`` that matches no dead letter (or more than one) exits 1
before anything is replayed; a purge not confirmed exits 1 and deletes nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from shared.cli.arguments import add_command, positive_int, queue_names
from shared.cli.output import EXIT_FAILED, EXIT_OK, failed, usage_error
from shared.errors import GreenroomError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.cli.dead_letters import DeadLetters


def register(commands: Any) -> None:
    dlq = add_command(
        commands,
        "dlq",
        "Inspect, replay or purge dead-lettered messages (<queue>.XQ).",
        "greenroom dlq list --queue default && greenroom dlq replay --queue default --all",
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = add_command(
        actions, "list", "Show dead letters (id, actor, age, arguments, error) without consuming them.",
        "greenroom dlq list --queue default --limit 20",
    )  # fmt: skip
    listing.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many per queue (default: 100)"
    )
    replay = add_command(
        actions, "replay",
        "Move dead letters back to their queue (all, or by message id); exit 1 if an id matches none.",
        "greenroom dlq replay --queue default --id 0c1f5a3e --fresh-retries",
    )  # fmt: skip
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id",
        dest="ids",
        nargs="+",
        metavar="ID",
        help="message ids to replay, each in full or an unambiguous prefix of 8+ characters (MIN_ID_PREFIX)",
    )
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--fresh-retries", action="store_true", help="reset the retry count")
    purge = add_command(
        actions, "purge", "Delete dead letters for good (asks for confirmation; exit 1 if not given).",
        "greenroom dlq purge --queue default --yes",
    )  # fmt: skip
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    for action in (listing, replay, purge):
        action.add_argument(
            "--queue", "-Q", action="append", metavar="Q", help="a queue (default: every task queue)"
        )
    dlq.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """List, replay or purge dead letters."""
    from shared.cli.dead_letters import DeadLetters
    from shared.producer import Producer
    from shared.tasks import TASKS

    known = sorted({contract.queue for contract in TASKS.values()})
    queues = sorted(set(queue_names(args.queue))) if args.queue else known
    if unknown := [repr(queue) for queue in queues if queue not in known]:
        return usage_error(
            f"--queue: no task uses queue {', '.join(unknown)} (queues with tasks: {', '.join(known)})"
        )
    producer = Producer(settings)
    letters = DeadLetters(producer)
    try:
        if args.dlq_command == "list":
            return _list(letters, queues, args.limit)
        if args.dlq_command == "replay":
            return _replay(letters, queues, args)
        return _purge(letters, queues, confirmed=args.yes)
    except GreenroomError as error:  # nothing is lost: a dead letter goes only once replayed
        return failed(error)
    finally:
        producer.close()


def _list(letters: DeadLetters, queues: list[str], limit: int) -> int:
    for queue in queues:
        found = letters.list(queue, limit=limit)
        print(f"{queue}.XQ: {len(found)} dead letter(s)")
        for letter in found:
            print(f"  {letter.line()}")
    return EXIT_OK


def _replay(letters: DeadLetters, queues: list[str], args: argparse.Namespace) -> int:
    """Replay every dead letter, or those the ids name; each id must name exactly one
    dead letter of ``queues`` (checked before anything is replayed)."""
    from shared.cli.dead_letters import resolve_ids

    wanted: dict[str, set[str] | None] = dict.fromkeys(queues)
    if not args.all:
        wanted = dict(resolve_ids(args.ids, {queue: letters.ids(queue) for queue in queues}))
    for queue, ids in wanted.items():
        count = letters.replay(queue, ids=ids, fresh_retries=args.fresh_retries)
        print(f"{queue}.XQ: replayed {count} to {queue}")
        if ids is not None and count < len(ids):
            print(f"greenroom: {queue}.XQ: {len(ids) - count} of the ids left it meanwhile", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _purge(letters: DeadLetters, queues: list[str], *, confirmed: bool) -> int:
    for queue in queues:
        if not confirmed and not _confirm(
            f"Delete every dead letter of {queue}? Type the queue name: ", queue
        ):
            print(
                f"greenroom: {queue}.XQ: left as it was (not confirmed; --yes skips the question)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"{queue}.XQ: purged {letters.purge(queue)}")
    return EXIT_OK


def _confirm(prompt: str, expected: str) -> bool:
    """Whether the answer read from stdin is ``expected``; the question is asked (on stderr)
    only when stdin is a terminal."""
    if sys.stdin.isatty():
        print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip() == expected
