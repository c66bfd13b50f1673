"""Session fixtures: the helm and kubectl binaries (installed once, see tools.py)."""

from __future__ import annotations

import pytest

from tests.chart.tools import tools_dir


@pytest.fixture(scope="session")
def helm() -> str:
    return str(tools_dir() / "helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return str(tools_dir() / "kubectl")
