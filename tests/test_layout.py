"""The repository's layout: nothing in the checkout shadows the standard library, and the
package list in pyproject.toml covers every folder of ``sidecar/`` and ``operator/``.

``python -m`` and ``pytest`` put the working directory first on ``sys.path``; from the
repository root, a regular ``operator`` package there once replaced the standard library's
``operator`` (``python -m pip install -e .`` failed with "No module named 'kopf'"). These run
from the root, without ``PYTHONSAFEPATH``, as a developer would.
"""

from __future__ import annotations

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
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_pip_runs_from_the_repository_root() -> None:
    run = run_from_root("-m", "pip", "--version")
    assert run.returncode == 0, run.stdout + run.stderr


def test_pytest_collects_from_the_repository_root() -> None:
    run = run_from_root("-m", "pytest", "-p", "no:cacheprovider", "--co", "-q")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "collected" in run.stdout.splitlines()[-1]


def test_operator_is_the_standard_librarys_from_the_repository_root() -> None:
    code = ("import operator, sys\n"
            "print(operator.__file__)\n"
            "import tidings.operator.main\n"
            "print(tidings.operator.main.__file__)\n")
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
