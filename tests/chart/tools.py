"""The tools the chart, image and helm-install tests run: helm and kubectl
(tests/tools/install.sh, cached under /var/cache/tidings), hadolint and kubernetes-validate (the
test extra's PyPI wheels), and rendering the chart into objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tidings"
INSTALL_SCRIPT = REPO / "tests" / "tools" / "install.sh"


def tools_dir() -> Path:
    """The directory holding ``helm`` and ``kubectl``; installs them on first use (cached).

    Raises ``RuntimeError`` with the installer's output when they cannot be installed: a missing
    tool fails the tests, it never skips them.
    """
    run = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
    )
    if run.returncode != 0 or not run.stdout.strip():
        raise RuntimeError(f"tests/tools/install.sh failed ({run.returncode}):\n{run.stderr}")
    return Path(run.stdout.strip().splitlines()[-1])


def venv_tool(name: str) -> str:
    """A console script of the test extra (next to this interpreter), e.g. ``hadolint``."""
    path = Path(sys.executable).with_name(name)
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[test]'")
    return found


def render(
    helm: str, *args: str, release: str = "tidings", namespace: str = "tidings-system"
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``args`` (e.g. ``--set k=v``) → the objects.

    Raises ``AssertionError`` with helm's message when rendering fails.
    """
    run = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``) among ``objects``."""
    (found,) = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    return found
