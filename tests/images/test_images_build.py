"""Dockerfile.sidecar and Dockerfile.operator built for real, and what they built, run.

Real: ``podman build --isolation=chroot`` of both Dockerfiles as they are, with
``--build-arg BASE=localhost/tidings-python:bookworm``: Debian bookworm debootstrapped from the
machine's Debian mirror with Debian's python3 (tests/images/build_base.sh, cached under
/var/cache/tidings/images), since no public base image (python:3.11-slim) can be pulled here.
The build stage downloads requirements/*.lock from PyPI and pip checks every hash. The only
thing the test adds to the build is the host's CA bundle for pip (a bind mount of the RUN steps,
not part of any layer), because this machine reaches PyPI through a TLS-intercepting proxy.

Not real: running a container. No OCI runtime can start one on this machine (crun's setrlimit is
refused), so each image's filesystem is exported from a created, never started, container and
its ENTRYPOINT runs in that tree with ``chroot``, as the image's numeric USER, in its WORKDIR,
with its Env only, on a read-only bind of the tree (readOnlyRootFilesystem, as the pods have it;
a tmpfs on /tmp for the operator only, the emptyDir its Deployment mounts there), /proc and the
host's /dev, all mounted in a mount namespace of the command's own (``unshare --mount``: nothing
stays mounted when it ends, however it ends). chroot keeps the host's network namespace, so the
sidecar's /v1.0/healthz is polled from outside on 127.0.0.1; the HEALTHCHECK command runs in a
network namespace of its own (``unshare --net``), where the sidecar can take its default port
3500. Not exercised: cgroup limits, seccomp, dropped capabilities, an engine running HEALTHCHECK
on its schedule, and the operator against a Kubernetes API (only its --help and imports here;
tests/cluster runs the operator's code against a real API server).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_BASE = REPO / "tests" / "images" / "build_base.sh"
CACHE = Path(os.environ.get("TIDINGS_IMAGES_CACHE", "/var/cache/tidings/images"))
NAMES = ("sidecar", "operator")
USER = "65532:65532"
# What the Dockerfiles add to the base, in bytes (the whole sidecar image is ~200 MB on the local
# base): a guard against losing the trimming (stripped extension modules, no bytecode).
ADDED_BUDGET = {"sidecar": 75_000_000, "operator": 160_000_000}
# What is writable in the pods that run the images, as they will be here: the injected sidecar has
# readOnlyRootFilesystem and only its read-only resources volume (operator/sidecar_patch.py), so
# nothing at all; the operator's Deployment mounts an emptyDir at /tmp (charts/tidings).
WRITABLE_TMP = {"sidecar": False, "operator": True}

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

_spec = importlib.util.spec_from_file_location("tidings_lock", REPO / "requirements" / "lock.py")
assert _spec and _spec.loader
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def run(argv: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, **kw)


def podman(*args: str, timeout: float = 600) -> str:
    done = run(["podman", *args], timeout=timeout)
    assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def image_id(ref: str) -> str | None:
    done = run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def drop_if_untagged(old: str | None) -> None:
    """Remove an image a rebuild replaced (and its untagged parents, the old layer cache)."""
    if old is None:
        return
    tags = run(["podman", "image", "inspect", "--format", "{{len .RepoTags}}", old], timeout=60)
    if tags.returncode == 0 and tags.stdout.strip() == "0":
        run(["podman", "rmi", old], timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Image:
    name: str
    tag: str
    inspect: dict[str, Any]
    tree: Path  # the exported filesystem (only read by the test)

    @property
    def config(self) -> dict[str, Any]:
        return self.inspect["Config"]

    def chroot(self, argv: list[str], *, user: str = USER) -> list[str]:
        """``argv`` as the image's runtime would start it: its user, WORKDIR and Env only, on a
        read-only root (with a tmpfs /tmp where its pod has one), /proc and /dev, in a mount
        namespace of its own (the process that runs ``argv`` is the one started: every step
        execs)."""
        root = self.tree.parent / "root"
        workdir = self.config.get("WorkingDir") or "/"
        environment = ["HOME=/", *self.config.get("Env", [])]
        q = shlex.quote
        mounts = " && ".join(
            [
                f"mount --bind {q(str(self.tree))} {q(str(root))}",
                f"mount -o remount,bind,ro {q(str(root))}",
                *(
                    [f"mount -t tmpfs -o mode=1777,size=64m tmpfs {q(str(root / 'tmp'))}"]
                    if WRITABLE_TMP.get(self.name)
                    else []
                ),
                f"mount -t proc proc {q(str(root / 'proc'))}",
                f"mount --bind /dev {q(str(root / 'dev'))}",
            ]
        )
        script = (
            f"{mounts} && exec chroot --userspec={user} {q(str(root))} /usr/bin/env -i "
            f'-C {q(workdir)} {" ".join(q(e) for e in environment)} "$@"'
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]

    def entrypoint(self, *args: str) -> list[str]:
        return self.chroot([*self.config["Entrypoint"], *args])


def build(name: str, base: str, pip_conf: Path, ca_bundle: Path) -> str:
    """``podman build`` of Dockerfile.<name>. The build stage is built and tagged first (the full
    build then reuses it from the layer cache): every image a rebuild replaces is then untagged
    and removed with exactly the layers no other image uses."""
    tag, build_tag = f"localhost/tidings-{name}:test", f"localhost/tidings-{name}-build:test"
    old = [image_id(tag), image_id(build_tag)]
    common = [
        "build",
        "--isolation=chroot",
        "--pull=never",
        "--format=docker",
        "--build-arg",
        f"BASE={base}",
        "--file",
        str(REPO / f"Dockerfile.{name}"),
        "--volume",
        f"{ca_bundle}:/run/tidings-build/ca-certificates.crt:ro",
        "--volume",
        f"{pip_conf}:/etc/pip.conf:ro",
    ]
    podman(*common, "--target", "build", "--tag", build_tag, str(REPO), timeout=1500)
    podman(*common, "--tag", tag, str(REPO), timeout=600)
    for previous in old:
        drop_if_untagged(previous)
    return tag


def export(tag: str, into: Path) -> Path:
    """The image's filesystem, from a created (never started) container, unpacked into
    ``into``/tree; ``into``/root is where each command mounts it read-only."""
    tree = into / "tree"
    tree.mkdir()
    (into / "root").mkdir()
    cid = podman("create", "--no-healthcheck", tag).strip()
    try:
        pipeline = f"podman export {cid} | tar --numeric-owner -xpf - -C {shlex.quote(str(tree))}"
        done = run(["bash", "-o", "pipefail", "-c", pipeline], timeout=600)
        assert done.returncode == 0, done.stderr
    finally:
        run(["podman", "rm", "--force", cid], timeout=120)
    return tree


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Image]]:
    started = time.monotonic()
    # installs podman, debootstrap and iproute2 when missing; the base images (cached)
    done = run(["bash", str(BUILD_BASE)], timeout=1500)
    assert done.returncode == 0 and done.stdout.strip(), f"build_base.sh failed:\n{done.stderr}"
    for tool in ("podman", "chroot", "unshare", "nsenter", "ip", "mount", "tar"):
        assert shutil.which(tool), f"{tool} is missing"
    base = done.stdout.strip().splitlines()[-1]
    # pip in the build stage trusts what this machine trusts (PIP_CERT or Debian's bundle)
    ca_bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    assert ca_bundle.is_file(), f"no CA bundle at {ca_bundle}"
    pip_conf = CACHE / "build-pip.conf"
    wanted = "[global]\ncert = /run/tidings-build/ca-certificates.crt\n"
    if not pip_conf.exists() or pip_conf.read_text() != wanted:
        pip_conf.write_text(wanted)
    built = {name: build(name, base, pip_conf, ca_bundle) for name in NAMES}
    print(f"\nimages built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    out, dirs = {}, []
    try:
        for name, tag in built.items():
            (inspect,) = json.loads(podman("image", "inspect", tag))
            dirs.append(tmp_path_factory.mktemp(name))
            out[name] = Image(name, tag, inspect, export(tag, dirs[-1]))
        out["base"] = Image(
            "base", base, json.loads(podman("image", "inspect", base))[0], Path("/nonexistent")
        )
        yield out
    finally:
        for path in dirs:  # ~500 MB of trees; nothing is mounted there outside a command's run
            run(["rm", "-rf", "--one-file-system", str(path)], timeout=300)


@pytest.mark.parametrize("name", NAMES)
def test_image_config(images: dict[str, Image], name: str) -> None:
    image = images[name]
    config = image.config
    assert config["User"] == USER
    assert config["Entrypoint"] == ["tidings", name]
    assert config["WorkingDir"] == "/tmp"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].startswith("/opt/tidings/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    healthcheck = image.inspect["Healthcheck"]
    assert healthcheck and healthcheck["Test"][0] == "CMD" and healthcheck["Test"][1] == "python"


@pytest.mark.parametrize("name", NAMES)
def test_entrypoint_help_as_the_image_user(images: dict[str, Image], name: str) -> None:
    done = run(images[name].entrypoint("--help"), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"usage: tidings {name}" in done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_root_is_read_only(images: dict[str, Image], name: str) -> None:
    """What the other tests run in: even root cannot write the image's root; /tmp is writable
    only for the operator (its pod's emptyDir), the sidecar runs with nothing writable."""
    image = images[name]
    done = run(image.chroot(["/bin/sh", "-c", "touch /probe"], user="0:0"), timeout=60)
    assert done.returncode != 0 and "Read-only file system" in done.stderr, done.stderr
    done = run(image.chroot(["/bin/sh", "-c", "id -u && touch /tmp/probe"]), timeout=60)
    assert done.stdout.strip() == USER.split(":")[0], done.stderr
    assert (done.returncode == 0) == WRITABLE_TMP[name], done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_installs_exactly_the_lock_and_no_installer(images: dict[str, Image], name: str) -> None:
    image = images[name]
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    done = run(image.chroot(["python", "-c", code]), timeout=120)
    assert done.returncode == 0, done.stderr
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in json.loads(done.stdout).items()}
    pinned = lock.pins((REPO / "requirements" / f"{name}.lock").read_text())
    pinned = {k: v for k, v in pinned.items() if k not in ("pip", "setuptools", "wheel")}
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert installed == {**pinned, "tidings": version}
    # neither the venv's Python nor the system's can import an installer
    no_installer = (
        "import importlib.util, sys; "
        "found = [m for m in ('pip', 'setuptools', 'wheel') "
        "if importlib.util.find_spec(m)]; sys.exit(str(found) if found else 0)"
    )
    for python in ("python", "python3", "/usr/bin/python3", "/usr/local/bin/python3"):
        if python.startswith("/") and not (image.tree / python.lstrip("/")).exists():
            continue
        done = run(image.chroot([python, "-c", no_installer]), timeout=120)
        assert done.returncode == 0, f"{python}: {done.stdout}{done.stderr}"
    for leftover in ("opt/build", "wheels", "src", "usr/bin/strip", "usr/local/bin/pip"):
        assert not (image.tree / leftover).exists(), leftover
    # the code is root's: the image's user can read it, not change it
    for path in (image.tree / "opt" / "tidings").rglob("*"):
        st = path.lstat()
        assert st.st_uid == 0, path
        assert path.is_symlink() or not st.st_mode & 0o022, path


def test_sidecar_serves_with_nothing_writable_and_exits_0_on_sigterm(
    images: dict[str, Image], tmp_path: Path
) -> None:
    image = images["sidecar"]
    http, grpc = free_port(), free_port()
    log = tmp_path / "sidecar.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            image.entrypoint(
                "--app-id",
                "images-test",
                "--dapr-http-port",
                str(http),
                "--dapr-grpc-port",
                str(grpc),
                "--dapr-public-port",
                str(free_port()),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        started, status = time.monotonic(), None
        while time.monotonic() - started < 60 and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http}/v1.0/healthz", timeout=2
                ) as response:
                    status = response.status
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        ready = time.monotonic() - started
        assert status == 204, f"no 204 from /v1.0/healthz (exit {proc.poll()}):\n{log.read_text()}"
        with socket.create_connection(("127.0.0.1", grpc), timeout=2):
            pass  # the Dapr gRPC API listens too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "sidecar API listening" in text and "sidecar stopped" in text, text
    print(
        f"\nsidecar in the image: /v1.0/healthz answered 204 {ready:.2f}s after start",
        file=sys.stderr,
    )


def test_sidecar_healthcheck_command(images: dict[str, Image], tmp_path: Path) -> None:
    """The image's HEALTHCHECK, run as an engine would (its CMD in the image, as its user):
    passes while a sidecar serves on the default port 3500, fails once it has stopped. In a
    network namespace of its own, so 3500 is free whatever else runs here."""
    image = images["sidecar"]
    check = image.chroot(image.inspect["Healthcheck"]["Test"][1:])
    log = tmp_path / "sidecar.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "unshare",
                "--net",
                "sh",
                "-c",
                'ip link set lo up && exec "$@"',
                "sh",
                *image.entrypoint("--app-id", "healthcheck", "--dapr-http-port", "3500"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        in_netns = ["nsenter", f"--net=/proc/{proc.pid}/ns/net", *check]
        deadline, done = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            done = run(in_netns, timeout=30)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        assert done is not None and done.returncode == 0, (
            f"HEALTHCHECK never passed (exit {proc.poll()}):\n{done and done.stderr}\n"
            f"{log.read_text()}"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # nothing listening: the same command fails (and is not a missing-interpreter 127)
    done = run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *check], timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr


def test_operator_healthcheck_command_runs_in_the_image(images: dict[str, Image]) -> None:
    """Without a Kubernetes API the operator's webhook cannot start here: its HEALTHCHECK is only
    shown to run in the image and to fail when nothing listens on the webhook port."""
    image = images["operator"]
    check = image.chroot(image.inspect["Healthcheck"]["Test"][1:])
    done = run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *check], timeout=60
    )
    assert done.returncode == 1 and "ConnectionRefusedError" in done.stderr, done.stderr


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_image_sizes(images: dict[str, Image], capsys: pytest.CaptureFixture[str]) -> None:
    """Report what the images weigh and what takes the space; fail past the budget of what the
    Dockerfiles add to the base."""
    base_size = images["base"].inspect["Size"]
    lines = [f"{images['base'].tag}: {base_size / 1e6:.1f} MB (the local base)"]
    over = []
    for name in NAMES:
        image = images[name]
        size, added = image.inspect["Size"], image.inspect["Size"] - base_size
        lines.append(
            f"{image.tag}: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB), "
            f"{added / 1e6:.1f} MB over the base"
        )
        site = next((image.tree / "opt" / "tidings" / "lib").glob("python3*/site-packages"))
        sizes = sorted(
            (
                (du(p), p.name)
                for p in site.iterdir()
                if p.is_dir() and not p.name.endswith(".dist-info")
            ),
            reverse=True,
        )
        lines.append(
            "  biggest in site-packages: "
            + ", ".join(f"{n} {s / 1e6:.1f}" for s, n in sizes[:8])
            + f" (MB; all {du(site) / 1e6:.1f})"
        )
        if added > ADDED_BUDGET[name]:
            over.append(f"{name} adds {added / 1e6:.1f} MB, budget {ADDED_BUDGET[name] / 1e6:.0f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not over, over
