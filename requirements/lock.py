#!/usr/bin/env python3
"""Regenerate the hash-pinned lock files the images install from, out of pyproject.toml.

    python3 requirements/lock.py              # re-resolve what changed, keep the other pins
    python3 requirements/lock.py --upgrade    # every package to its newest allowed release
    python3 requirements/lock.py --check      # no network: do the locks match pyproject.toml?

Writes, next to this script:
  sidecar.lock   tidings' dependencies + the `otel` extra     (Dockerfile.sidecar)
  operator.lock  tidings' dependencies + the `operator` extra  (Dockerfile.operator)
  build.lock     build-system.requires (setuptools, wheel): what builds the tidings wheel

With pip-compile (pip-tools, pinned below, in a throw-away venv) and --generate-hashes: every
file PyPI has for each pinned release is hashed, so `pip install --require-hashes` takes the
same set on any platform. It must run on CPython 3.11 on Linux, the images' Python, because
environment markers are resolved for the interpreter that runs it. The machine's pip
configuration (find-links, extra indexes, constraints) is ignored so the locks name PyPI's files
only; PIP_INDEX_URL, when set, is honoured.

Each lock's first line records a digest of the requirements it was made from
(`# inputs-sha256: ...`); `--check` and tests/images/test_locks.py compare it with
pyproject.toml, so a dependency changed without regenerating the locks fails the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYPROJECT = REPO / "pyproject.toml"
PIP_TOOLS = "pip-tools==7.7.0"
PIP = "pip==26.3"
# lock name -> the extras of tidings it covers (None: the build requirements)
LOCKS: dict[str, tuple[str, ...] | None] = {
    "sidecar": ("otel",),
    "operator": ("operator",),
    "build": None,
}
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.+?))?\s*\\?$")


def lock_path(name: str) -> Path:
    return HERE / f"{name}.lock"


def inputs(name: str, pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement strings of pyproject.toml that lock ``name`` is resolved from."""
    data = tomllib.loads(pyproject.read_text())
    extras = LOCKS[name]
    if extras is None:
        return sorted(data["build-system"]["requires"])
    optional = data["project"].get("optional-dependencies", {})
    return sorted([*data["project"]["dependencies"], *(r for e in extras for r in optional[e])])


def digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()


def pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` of a pip-compile output."""
    found = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def problems(name: str, pyproject: Path = PYPROJECT) -> list[str]:
    """What makes lock ``name`` stale or unusable for ``--require-hashes``; [] when none."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare interpreter: pip's own copy
        from pip._vendor.packaging.requirements import Requirement

    path = lock_path(name)
    if not path.exists():
        return [f"{path.name} is missing"]
    text = path.read_text()
    wanted = inputs(name, pyproject)
    out = []
    first = text.splitlines()[0] if text else ""
    match = DIGEST_LINE.match(first)
    if not match:
        out.append(f"{path.name}: first line is not '# inputs-sha256: ...'")
    elif match.group(1) != digest(wanted):
        out.append(f"{path.name} was made from other requirements than pyproject.toml has now")
    pinned = pins(text)
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key not in pinned:
            out.append(f"{path.name}: {req.name} is not pinned")
        elif not req.specifier.contains(pinned[key], prereleases=True):
            out.append(f"{path.name}: {req.name}=={pinned[key]} does not satisfy {line!r}")
    # every requirement line is an exact pin followed by at least one hash
    blocks = re.split(
        r"\n(?=\S)",
        "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")).strip(),
    )
    for block in blocks:
        head = block.splitlines()[0].strip()
        if not PIN.match(head):
            out.append(f"{path.name}: not an exact pin: {head!r}")
        elif "--hash=sha256:" not in block:
            out.append(f"{path.name}: no hash for {head!r}")
    return out


def pip_env() -> dict[str, str]:
    """The environment without this machine's pip configuration (PIP_INDEX_URL is kept)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PIP_FIND_LINKS",
            "PIP_EXTRA_INDEX_URL",
            "PIP_CONSTRAINT",
            "PIP_NO_INDEX",
            "PIP_REQUIRE_HASHES",
        )
    }
    env.update(PIP_CONFIG_FILE=os.devnull, CUSTOM_COMPILE_COMMAND="python3 requirements/lock.py")
    return env


def compile_lock(name: str, tool: Path, upgrade: bool, tmp: Path) -> None:
    extras = LOCKS[name]
    out = lock_path(name)
    args = [
        str(tool / "pip-compile"),
        "--quiet",
        "--generate-hashes",
        "--allow-unsafe",
        "--strip-extras",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--no-emit-trusted-host",
        "--newline=LF",
        "--output-file",
        str(out),
    ]
    for extra in extras or ():
        args += ["--extra", extra]
    if upgrade:
        args.append("--upgrade")
    # strip our digest line first: pip-compile rewrites the file and keeps only its pins
    if out.exists():
        lines = out.read_text().splitlines(keepends=True)
        if lines and DIGEST_LINE.match(lines[0].rstrip("\n")):
            out.write_text("".join(lines[1:]))
    print(f"pip-compile {out.relative_to(REPO)}", file=sys.stderr)
    if extras is None:
        # The static build-system.requires, from a file in a scratch folder: resolving them needs
        # no build of tidings (setuptools asks for nothing more to build a wheel).
        (tmp / "build-system.requires").write_text("\n".join(inputs(name)) + "\n")
        subprocess.run([*args, "build-system.requires"], cwd=tmp, env=pip_env(), check=True)
    else:
        # cwd: the repo, so the lock's comments say `via tidings (pyproject.toml)`
        subprocess.run([*args, "pyproject.toml"], cwd=REPO, env=pip_env(), check=True)
    body = out.read_text()
    out.write_text(f"# inputs-sha256: {digest(inputs(name))}\n{body}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="newest allowed releases")
    parser.add_argument("--check", action="store_true", help="only check, no network")
    args = parser.parse_args()
    if args.check:
        found = [p for name in LOCKS for p in problems(name)]
        for problem in found:
            print(problem, file=sys.stderr)
        if found:
            print("run: python3 requirements/lock.py", file=sys.stderr)
        return 1 if found else 0
    if sys.version_info[:2] != (3, 11) or not sys.platform.startswith("linux"):
        print("lock.py must run on CPython 3.11 on Linux (the images' Python)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tidings-lock-") as tmp:
        tool = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(tool)], check=True, cwd=tmp)
        subprocess.run(
            [
                str(tool / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PIP,
                PIP_TOOLS,
            ],
            check=True,
            cwd=tmp,
            env=pip_env(),
        )
        for name in LOCKS:
            compile_lock(name, tool / "bin", args.upgrade, Path(tmp))
    found = [p for name in LOCKS for p in problems(name)]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
