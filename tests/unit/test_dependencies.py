"""Every third-party module the packages import comes from a declared, bounded, pinned distribution."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from functools import cache
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("shared", "workers", "observability")
#: Tools outside production: what they import beyond the production set is an extra.
TOOL_EXTRAS = {"shared/bench": "bench"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(names: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(req.name): req for req in map(Requirement, names)}


@cache
def _distribution_of_file() -> dict[Path, str]:
    owners: dict[Path, str] = {}
    for dist in distributions():
        for file in dist.files or ():
            owners[Path(str(dist.locate_file(file))).resolve()] = canonicalize_name(dist.metadata["Name"])
    return owners


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    return modules


def _distribution(module: str) -> str | None:
    """The distribution that provides ``module``; None for the standard library and the project."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in PRODUCTION or top == "__future__":
        return None
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # ``from package import name``: a name, not a module
        return None
    if spec is None and "." in module:  # ``from package import name``: the package is checked
        return None
    assert spec is not None, f"{module} is imported but not installed"
    if spec.origin is None:  # a namespace package: its submodules are checked
        return None
    owner = _distribution_of_file().get(Path(spec.origin).resolve())
    assert owner is not None, f"no installed distribution provides {module} ({spec.origin})"
    return owner


def _distributions_imported(files: list[Path]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in files:
        for module in _imported_modules(path):
            dist = _distribution(module)
            if dist is not None:
                used.setdefault(dist, set()).add(f"{path.relative_to(ROOT)}: {module}")
    return used


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _production_files() -> list[Path]:
    tools = [ROOT / tool for tool in TOOL_EXTRAS]
    return [
        path
        for package in PRODUCTION
        for path in _files(package)
        if not any(path.is_relative_to(tool) for tool in tools)
    ]


def test_every_production_import_is_a_declared_dependency() -> None:
    declared = _requirements(_pyproject()["project"]["dependencies"])

    used = _distributions_imported(_production_files())

    undeclared = {dist: sorted(where)[:3] for dist, where in used.items() if dist not in declared}
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_every_distribution_a_compat_module_was_written_against_is_declared() -> None:
    from observability import opentelemetry_compat

    declared = _requirements(_pyproject()["project"]["dependencies"])
    relied_on = {**opentelemetry_compat.WRITTEN_AGAINST, **opentelemetry_compat.GRPC_WRITTEN_AGAINST}

    for name, version in relied_on.items():
        requirement = declared.get(canonicalize_name(name))
        assert requirement is not None, f"{name} is checked by opentelemetry_compat but not declared"
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version}: {requirement}"


def test_what_a_tool_imports_beyond_production_is_its_extra() -> None:
    project = _pyproject()["project"]
    production = set(_requirements(project["dependencies"]))
    for tool, extra in TOOL_EXTRAS.items():
        declared = production | set(_requirements(project["optional-dependencies"][extra]))

        used = _distributions_imported(_files(tool))

        undeclared = {dist: sorted(where)[:3] for dist, where in used.items() if dist not in declared}
        assert not undeclared, f"{tool} imports these, missing from the {extra!r} extra: {undeclared}"


def test_every_dependency_has_an_upper_bound_the_constraints_satisfy() -> None:
    project = _pyproject()["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = _constraints()

    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        uppers = [spec for spec in requirement.specifier if spec.operator in ("<", "<=", "==", "~=")]
        assert uppers, f"{requirement} has no upper bound"
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}"
        )


def test_constraints_pin_what_is_installed() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}

    differing = {
        name: (pinned, installed.get(name))
        for name, pinned in _constraints().items()
        if installed.get(name) not in (pinned, None)
    }

    assert not differing, f"constraints.txt (pinned, installed) differ: {differing}"


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    return pins
