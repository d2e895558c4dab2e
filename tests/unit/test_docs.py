"""The README and docs/ show only real things: commands that parse, names that exist, links that resolve.

What a shown command prints is checked by tests/e2e/test_docs_examples.py; the docs site
itself is built with ``mkdocs build --strict`` by ``make docs`` (part of ``make test``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from shared.cli import build_parser
from shared.settings import Settings
from tests.docs_examples import (
    DOCUMENTS,
    ROOT,
    Block,
    Example,
    all_blocks,
    all_examples,
    is_greenroom,
    prose,
    split_assignments,
)
from tests.support import metric_families

README = ROOT / "README.md"
MAX_README_BYTES = 15 * 1024
PROJECT_PACKAGES = ("shared", "workers", "observability", "tests")
#: Variables docker-compose.yml reads (its ${NAME} references): the compose examples set them.
COMPOSE_VARIABLES = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
MAKE_VARIABLES = set(re.findall(r"\$\((\w+)\)", (ROOT / "Makefile").read_text()))
#: Files the docs tell you to create (code blocks titled with a path): they need not exist.
DOCUMENTED_NEW_FILES = {block.title for block in all_blocks() if block.title}

EXAMPLES = all_examples()
PYTHON_BLOCKS = [block for block in all_blocks() if block.lang == "python"]


def _id(example: Example) -> str:
    return example.where()


# Commands ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_every_shown_command_is_a_real_command(example: Example) -> None:
    assignments, argv = split_assignments(example.argv())
    for name in assignments:
        assert name in Settings.model_fields or name in COMPOSE_VARIABLES, (
            f"{example.where()}: {name} is neither a setting nor a variable docker-compose.yml reads"
        )
    if not argv:
        assert assignments, f"{example.where()}: no command"
        return
    program, *arguments = argv
    if is_greenroom(program):
        _check_greenroom(example, arguments)
    elif program == "make":
        _check_make(example, arguments)
    elif program == "docker":
        _check_docker_compose(example, arguments)
    elif program == "kubectl":
        _check_kubectl(example, arguments)
    else:
        pytest.fail(f"{example.where()}: no check knows the program {program!r}; add one to {__file__}")


def _check_greenroom(example: Example, arguments: list[str]) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(arguments)
        except SystemExit as exit_:
            pytest.fail(
                f"{example.where()}: the greenroom parser refuses it ({exit_.code}): {stderr.getvalue()}"
            )


def _check_make(example: Example, arguments: list[str]) -> None:
    assignments = [word.split("=")[0] for word in arguments if "=" in word]
    targets = [word for word in arguments if "=" not in word]
    assert targets, f"{example.where()}: no make target"
    for target in targets:
        assert target in MAKE_TARGETS, f"{example.where()}: the Makefile has no target {target!r}"
    for name in assignments:
        assert name in MAKE_VARIABLES, f"{example.where()}: the Makefile uses no variable {name}"


def _check_docker_compose(example: Example, arguments: list[str]) -> None:
    assert arguments[:1] == ["compose"], f"{example.where()}: only `docker compose` is documented"
    words = arguments[1:]
    files = ["docker-compose.yml"]
    if words[:1] == ["-f"]:
        files, words = [words[1]], words[2:]
    services: set[str] = set()
    for name in files:
        assert (ROOT / name).is_file(), f"{example.where()}: no file {name}"
        services |= set(yaml.safe_load((ROOT / name).read_text())["services"])
    command, *rest = words
    assert command in ("up", "down", "logs", "ps", "build"), f"{example.where()}: compose {command}?"
    for word in rest:
        if word.startswith("-"):
            assert word in ("--build", "--scale", "-d", "--detach"), f"{example.where()}: option {word}"
            continue
        service = word.split("=")[0]  # `--scale worker-reports=3`
        assert service in services, f"{example.where()}: docker-compose.yml has no service {service!r}"


def _check_kubectl(example: Example, arguments: list[str]) -> None:
    assert arguments[:2] == ["apply", "-f"], f"{example.where()}: only `kubectl apply -f` is documented"
    assert (ROOT / arguments[2]).exists(), f"{example.where()}: no {arguments[2]}"


def test_the_quick_start_is_make_run_and_make_test() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [e.command.split("#")[0].strip() for e in EXAMPLES if e.block.document == README]
    assert commands[:2] == ["make run", "make test"], commands[:2]
    assert "make run" in quick_start and "make test" in quick_start
    makefile = (ROOT / "Makefile").read_text()
    # make test sets up, lints, builds the docs, then runs the suite; make setup installs the docs tools
    assert re.search(r"^test: setup .*\blint docs\b", makefile, re.MULTILINE), "make test must build the docs"
    assert "mkdocs build --strict" in makefile
    assert "--constraint constraints.txt -e '.[dev,docs,bench]'" in makefile


# Python ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=Block.where)
def test_every_python_block_compiles_and_its_imports_resolve(block: Block) -> None:
    tree = ast.parse(block.body, filename=block.where())
    compile(tree, block.where(), "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _resolve(block, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            assert node.module and node.level == 0, f"{block.where()}: relative import"
            for alias in node.names:
                _resolve(block, node.module, alias.name)


def _resolve(block: Block, module: str, name: str | None) -> None:
    if module.split(".")[0] not in PROJECT_PACKAGES:
        imported = importlib.import_module(module)
        assert name is None or hasattr(imported, name), f"{block.where()}: {module} has no {name}"
        return
    names = _module_names(module)
    assert names is not None, f"{block.where()}: no module {module} in the repository (nor documented)"
    assert name is None or name in names, f"{block.where()}: {module} defines no {name!r}"


def _module_names(module: str) -> set[str] | None:
    """Top-level names a project module defines (or a documented new file), read without importing it."""
    relative = module.replace(".", "/")
    for block in all_blocks():
        if block.title == f"{relative}.py":
            return _top_level_names(ast.parse(block.body))
    for candidate in (ROOT / f"{relative}.py", ROOT / relative / "__init__.py"):
        if candidate.is_file():
            names = _top_level_names(ast.parse(candidate.read_text()))
            if candidate.name == "__init__.py":
                names |= {path.stem for path in candidate.parent.iterdir() if path.suffix == ".py"}
                names |= {path.name for path in candidate.parent.iterdir() if (path / "__init__.py").exists()}
            return names
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_adding_a_task_as_the_readme_says_makes_it_known_to_producers_and_workers(tmp_path: Path) -> None:
    # Given: the README's two files, written where it says, in a copy of the layout
    readme_blocks = {
        block.title: block.body for block in all_blocks() if block.document == README and block.title
    }
    contract_path, actor_path = sorted(readme_blocks, key=lambda title: not title.startswith("shared/"))
    for title, body in readme_blocks.items():
        (tmp_path / title).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / title).write_text(body)
    contract_module = contract_path.removesuffix(".py").replace("/", ".")
    actor_module = actor_path.removesuffix(".py").replace("/", ".")
    probe = textwrap.dedent(f"""
        import shared.contracts, workers
        shared.contracts.__path__.append({str(tmp_path / "shared/contracts")!r})
        workers.__path__.append({str(tmp_path / "workers")!r})
        import importlib
        importlib.import_module({contract_module!r})
        importlib.import_module({actor_module!r})
        from shared.tasks import get_task
        contract = get_task("images.resize")
        actor = workers.broker.get_actor("images.resize")
        print(contract.queue, actor.queue_name, contract.validate({{"image_url": "u", "width": 5}}))
    """)

    # When: a producer and a worker process import them
    env = {key: value for key, value in os.environ.items() if key not in Settings.model_fields}
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={
            **env,
            "PYTHONPATH": str(ROOT),
            "METRICS_DIR": str(tmp_path / "metrics"),
            "TRACING_ENABLED": "false",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then: both know the task, on the queue the contract names
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "images images {'image_url': 'u', 'width': 5}"


# Names ------------------------------------------------------------------------------


def _inline_code(document: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(document))


def _table_first_column(text: str, heading: str) -> list[str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [row.split("|")[1].strip() for row in section.splitlines() if row.startswith("| `")]


def test_the_readme_settings_table_names_every_setting_and_nothing_else() -> None:
    rows = _table_first_column(README.read_text(), "Settings")
    shown = [name.strip(" `") for row in rows for name in row.split(",")]
    assert len(shown) == len(set(shown)), "a setting is listed twice"
    assert set(shown) == set(Settings.model_fields), (
        f"missing: {sorted(set(Settings.model_fields) - set(shown))}, "
        f"unknown: {sorted(set(shown) - set(Settings.model_fields))}"
    )


_UPPER_NAME = re.compile(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
#: The first word of each setting (WORKER_, TASK_ ...); OpenTelemetry's OTEL_ variables are the SDK's.
_SETTING_PREFIXES = tuple(
    {name.split("_")[0] + "_" for name in Settings.model_fields if "_" in name} - {"OTEL_"}
)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_setting_named_in_the_docs_exists(document: Path) -> None:
    # A name shaped like a setting (WORKER_..., or NAME=value) must be a setting or a compose variable.
    for code in _inline_code(document):
        for name in _UPPER_NAME.findall(code):
            if name.startswith(_SETTING_PREFIXES) or f"{name}=" in code:
                assert (
                    name in Settings.model_fields or name in COMPOSE_VARIABLES or name.startswith("OTEL_")
                ), f"{document.name}: `{code}` names {name}, which is not a setting"


def _code_strings() -> set[str]:
    """Every string literal of the production packages that starts with greenroom_."""
    found: set[str] = set()
    for package in ("shared", "workers", "observability"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found |= set(re.findall(r"\bgreenroom_[a-z_]+\b", node.value))
    return found


METRIC_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_metric_recording_rule_and_alert_named_exists(document: Path) -> None:
    code = _code_strings()
    rules = "\n".join(path.read_text() for path in (ROOT / "observability/prometheus/rules").glob("*.yml"))
    text = document.read_text()
    for name in set(re.findall(r"\bgreenroom_[a-z_]+\b", text)):
        base = next((name.removesuffix(s) for s in METRIC_SUFFIXES if name.endswith(s)), name)
        assert name in code or base in code, f"{document.name}: {name} is in no greenroom code"
    for rule in set(re.findall(r"\bgreenroom:[a-z_0-9]+:[a-z_0-9]+\b", text)):
        assert f"record: {rule}" in rules, f"{document.name}: no recording rule {rule}"
    for alert in set(re.findall(r"`(Greenroom[A-Za-z]+)`", text)):
        assert f"alert: {alert}" in rules, f"{document.name}: no alert {alert}"


def test_the_observability_reference_lists_every_metric_family_and_alert() -> None:
    reference = (ROOT / "docs/observability.md").read_text()
    families = metric_families()
    assert len(families) >= 8, families
    for family, kind in families.items():
        shown = f"{family}_total" if kind.startswith("Counter") and not family.endswith("_total") else family
        assert f"`{shown}`" in reference, f"docs/observability.md does not describe {shown}"
    rules = "\n".join(path.read_text() for path in (ROOT / "observability/prometheus/rules").glob("*.yml"))
    for alert in re.findall(r"alert: (\w+)", rules):
        assert f"`{alert}`" in reference, f"docs/observability.md does not describe the alert {alert}"


# Paths and links ------------------------------------------------------------------------

_TRACKED = subprocess.run(
    ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
).stdout.split()
_TRACKED_NAMES = {Path(path).name for path in _TRACKED}
_TOP_LEVEL = {path.split("/")[0] for path in _TRACKED} | {"docs"}


def _missing_path(token: str) -> bool:
    token = token.rstrip("/")
    if token in DOCUMENTED_NEW_FILES:
        return False
    if any(mark in token for mark in "<*"):  # a pattern: its fixed directory must exist
        fixed = token.split("<")[0].split("*")[0].rsplit("/", 1)[0]
        return not (ROOT / fixed).is_dir()
    return not (ROOT / token).exists()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_path_shown_exists(document: Path) -> None:
    for code in _inline_code(document):
        token = code.split()[0] if code.split() else code
        if "/" in token and token.split("/")[0] in _TOP_LEVEL and ":" not in token:
            assert not _missing_path(token), f"{document.name}: `{code}`: no such path in the repository"
        elif re.fullmatch(
            r"[\w.-]+\.(py|yml|yaml|json|toml|txt|conf|md)|Procfile|Dockerfile|Makefile", token
        ):
            assert token in _TRACKED_NAMES or token in {"bench.json"} or (ROOT / token).exists(), (
                f"{document.name}: `{code}`: no file of that name in the repository"
            )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_dotted_project_name_shown_exists(document: Path) -> None:
    for code in _inline_code(document):
        dotted = code.split("(")[0]
        if not re.fullmatch(r"(shared|workers|observability)(\.\w+)+", dotted):
            continue
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            names = _module_names(".".join(parts[:cut]))
            if names is not None:
                rest = parts[cut:]
                assert not rest or rest[0] in names, f"{document.name}: `{code}`: no {rest[0]} in it"
                break
        else:
            pytest.fail(f"{document.name}: `{code}`: no such module")


def _slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) and GitHub give a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(document)):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: link to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", prose(linked), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, (
                f"{document.name}: link to {target}: no such heading"
            )


def test_the_readme_is_at_most_15_kib() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_docs_show_examples_of_every_kind_checked_here() -> None:
    # Guards the extraction itself: if a block format changed, these checks would pass on nothing.
    assert len(EXAMPLES) >= 25
    assert sum(1 for e in EXAMPLES if e.output) >= 8
    assert len(PYTHON_BLOCKS) >= 4
    assert {e.argv()[0] for e in EXAMPLES} >= {"make", "greenroom", "docker", "kubectl"}


def test_the_architecture_page_layout_matches_the_tree() -> None:
    page = ROOT / "docs/architecture.md"
    [tree] = [b for b in all_blocks() if b.document == page and "shared/" in b.body.split("\n", 1)[0]]
    parent = ""
    checked = 0
    for line in tree.body.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if not re.fullmatch(r"[\w*.-]+(\.py|/)", entry):
            continue
        if not line.startswith(" "):
            parent = entry
            path = entry
        else:
            path = parent + entry
        matches = list(ROOT.glob(path.rstrip("/")))
        assert matches, f"docs/architecture.md shows {path}, which the repository does not have"
        checked += 1
    assert checked >= 20
