"""The repository's layout: nothing in the checkout shadows the standard library, the package
list in pyproject.toml covers every folder of ``sidecar/`` and ``operator/``, and no module of
``tidings.sidecar`` or ``tidings.operator`` imports itself through others (no import cycle).

``python -m`` and ``pytest`` put the working directory first on ``sys.path``; from the
repository root, a regular ``operator`` package there once replaced the standard library's
``operator`` (``python -m pip install -e .`` failed with "No module named 'kopf'"). These run
from the root, without ``PYTHONSAFEPATH``, as a developer would.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# folder -> package, as pyproject.toml's package-dir maps them
PACKAGE_ROOTS = {"sidecar": "tidings.sidecar", "operator": "tidings.operator"}


def run_from_root(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_pip_runs_from_the_repository_root() -> None:
    run = run_from_root("-m", "pip", "--version")
    assert run.returncode == 0, run.stdout + run.stderr


def test_pytest_collects_from_the_repository_root() -> None:
    run = run_from_root("-m", "pytest", "-p", "no:cacheprovider", "--co", "-q")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "collected" in run.stdout.splitlines()[-1]


def test_operator_is_the_standard_librarys_from_the_repository_root() -> None:
    code = (
        "import operator, sys\n"
        "print(operator.__file__)\n"
        "import tidings.operator.main\n"
        "print(tidings.operator.main.__file__)\n"
    )
    run = run_from_root("-c", code)
    assert run.returncode == 0, run.stdout + run.stderr
    stdlib_operator, operator_main = run.stdout.splitlines()
    assert Path(stdlib_operator).parent == Path(sysconfig.get_paths()["stdlib"])
    assert Path(operator_main).name == "main.py"


def test_pyproject_lists_every_package_folder() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {p: f for f, p in PACKAGE_ROOTS.items()}
    folders = set()
    for folder, package in PACKAGE_ROOTS.items():
        for module in (REPO / folder).rglob("*.py"):
            relative = module.parent.relative_to(REPO / folder)
            folders.add(".".join([package, *relative.parts]))
    assert set(setuptools["packages"]) == folders


def tidings_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package folders: dotted name -> (file, is a package's __init__)."""
    modules = {}
    for folder, package in PACKAGE_ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the tidings modules it imports anywhere in its file: at module level, under
    ``if TYPE_CHECKING``, inside functions. Relative imports are resolved; ``from pkg import x``
    counts as importing ``pkg.x`` when that is a module."""
    modules = tidings_modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        edges = set()
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_import_graph_sees_relative_and_function_level_imports() -> None:
    graph = import_graph()
    assert "tidings.sidecar.inbound.http.keys" in graph["tidings.sidecar.inbound.http.app"]
    # imported inside open_app_channel only, and through `from . import x` of a module
    assert "tidings.sidecar.delivery.channel.grpc" in graph["tidings.sidecar.delivery.channel"]
    assert "tidings.sidecar.runtime.metrics" in graph["tidings.sidecar.brokers.redis"]
    assert "tidings.sidecar.resources" in graph["tidings.operator.validation"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []
