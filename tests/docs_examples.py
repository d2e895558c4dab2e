"""What the README and docs/ show: code blocks, shell commands with their shown output, links.

Both tests/unit/test_docs.py (every command is a real one, every name exists) and
tests/e2e/test_docs_examples.py (every shown output is what the command prints) read
the documents through this module, so a new example is checked as soon as it is written.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r'title="([^"]+)"')
SHELL_LANGUAGES = ("console", "bash", "sh", "shell")


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    lang: str
    body: str
    title: str | None

    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


@dataclass
class Example:
    """One shell command as a document shows it, with the output shown under it (maybe none)."""

    block: Block
    command: str
    output: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return shlex.split(self.command, comments=True)

    def where(self) -> str:
        return f"{self.block.where()}: $ {self.command}"


def blocks(document: Path) -> list[Block]:
    text = document.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        body = textwrap.dedent(match["body"])
        title = _TITLE.search(match["attrs"])
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(document, line, match["lang"], body, title[1] if title else None))
    return found


def all_blocks() -> list[Block]:
    return [block for document in DOCUMENTS for block in blocks(document)]


def prose(document: Path) -> str:
    """The document without its fenced code blocks."""
    return _FENCE.sub("", document.read_text(encoding="utf-8"))


def examples(block: Block) -> list[Example]:
    """The commands of a shell block: ``$ `` lines of a console block (the lines up to the
    next one are its output), every line but comments of a bash block."""
    if block.lang not in SHELL_LANGUAGES:
        return []
    found: list[Example] = []
    for line in block.body.splitlines():
        if block.lang != "console":
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(Example(block, line.strip()))
        elif line.startswith("$ "):
            found.append(Example(block, line[2:].strip()))
        elif found and line.strip():
            found[-1].output.append(line)
        elif line.strip():
            raise AssertionError(f"{block.where()}: console output before any $ command: {line!r}")
    return found


def all_examples() -> list[Example]:
    return [example for block in all_blocks() for example in examples(block)]


ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def split_assignments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``VAR=value`` words before a command (or after ``export``), and the command's words."""
    if argv[:1] == ["export"]:
        argv = argv[1:]
    assignments: dict[str, str] = {}
    while argv and (match := ASSIGNMENT.match(argv[0])):
        assignments[match[1]] = match[2]
        argv = argv[1:]
    return assignments, argv


def is_greenroom(program: str) -> bool:
    return program == "greenroom" or program.endswith("/bin/greenroom")
