"""requirements/*.lock, what the images install, still match pyproject.toml.

No network: each lock's first line records a digest of the requirements it was resolved from
(requirements/lock.py writes it); a dependency changed in pyproject.toml without regenerating the
locks (`python3 requirements/lock.py`) fails here, and so does a lock line pip's
``--require-hashes`` would refuse.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tidings_lock", REPO / "requirements" / "lock.py")
assert _spec and _spec.loader
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


@pytest.mark.parametrize("name", sorted(lock.LOCKS))
def test_lock_matches_pyproject(name: str) -> None:
    assert lock.problems(name) == [], "run: python3 requirements/lock.py"


@pytest.mark.parametrize("name", ["sidecar", "operator"])
def test_lock_covers_the_image_extras(name: str) -> None:
    """The image's lock pins tidings' dependencies and the extra the image needs, and no other
    extra (the sidecar image has no kopf, the operator image no OpenTelemetry SDK)."""
    pins = lock.pins(lock.lock_path(name).read_text())
    assert ("kopf" in pins) == (name == "operator")
    assert ("opentelemetry-sdk" in pins) == (name == "sidecar")
    assert {"aiohttp", "aiokafka", "grpcio", "dapr", "uvloop"} <= pins.keys()
    assert "tidings" not in pins


def test_a_changed_dependency_makes_the_locks_stale(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (REPO / "pyproject.toml").read_text()
    changed = re.sub(r'"aiohttp>=[^"]+"', '"aiohttp>=99"', text, count=1)
    assert changed != text
    pyproject.write_text(changed)
    found = lock.problems("sidecar", pyproject)
    assert any("other requirements" in p for p in found), found
    assert any("aiohttp==" in p and "does not satisfy" in p for p in found), found


@pytest.mark.parametrize("name", ["sidecar", "operator"])
def test_dockerfile_installs_from_its_lock_with_hashes(name: str) -> None:
    text = (REPO / f"Dockerfile.{name}").read_text()
    joined = re.sub(r"\s+", " ", text.replace("\\\n", " "))
    assert f"--require-hashes --no-deps --wheel-dir /wheels -r requirements/{name}.lock" in joined
    assert "--require-hashes --no-deps -r requirements/build.lock" in joined
    assert "install --no-index --no-deps" in joined
