"""The ``tidings`` command line, run as a user would: init, run, publish, uninstall, and the
README's demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.cli.localdev import Home

from .processes import HERE, http_json, poll, run_to_end, write_component

ROOT = HERE.parent.parent


def tidings() -> str:
    found = shutil.which("tidings", path=str(Path(sys.executable).parent))
    assert found, "the tidings console script is installed with the package"
    return found


@pytest.fixture
def home_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A TIDINGS_HOME of its own; whatever the test does, its local broker is stopped after."""
    env = {**os.environ, "TIDINGS_HOME": str(tmp_path / "home")}
    yield env
    subprocess.run([tidings(), "uninstall"], env=env, capture_output=True)


def test_init_run_publish_uninstall(tmp_path: Path, unique: str, home_env: dict[str, str]) -> None:
    env = home_env
    out = subprocess.run(
        [tidings(), "init", "--broker-port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "broker started" in out
    component = (tmp_path / "home" / "resources" / "pubsub.yaml").read_text()
    assert "pubsub.kafka" in component

    again = subprocess.run([tidings(), "init"], env=env, capture_output=True, text=True, check=True)
    assert "already running" in again.stdout

    topic = f"cli-{unique}"
    app_port = free_port()
    log = (tmp_path / "run.log").open("wb")
    metrics_port = free_port()
    run = subprocess.Popen(
        [
            tidings(),
            "run",
            "--app-id",
            "cli-sub",
            "--app-port",
            str(app_port),
            "--metrics-port",
            str(metrics_port),
            "--",
            sys.executable,
            str(HERE / "recorder_app.py"),
        ],
        env={**env, "APP_PORT": str(app_port), "TOPICS": topic},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def delivered() -> bool:
            # `tidings run` may still be starting and the group joining: publish until one
            # arrives (exit 2 means the sidecar is not registered yet)
            sent = subprocess.run(
                [
                    tidings(),
                    "publish",
                    "--app-id",
                    "cli-sub",
                    "--pubsub",
                    "pubsub",
                    "--topic",
                    topic,
                    "--data",
                    '{"hello": "world"}',
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            assert sent.returncode in (0, 2), sent.stderr
            if sent.returncode:
                return False
            try:
                _, body = http_json(f"http://127.0.0.1:{app_port}/received")
            except OSError:
                return False
            return bool(body["finished"])

        poll("a published event to reach the app", delivered, 60, interval_s=0.5)

        def status() -> list[dict[str, object]] | None:
            out = subprocess.run(
                [tidings(), "status", "--app-id", "cli-sub", "-o", "json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows = [r for r in json.loads(out) if r.get("topic") == topic]
            return rows if rows and rows[0]["status"]["lag"] == 0 else None

        [row] = poll("tidings status to show the subscription with no lag", status, 30)
        assert row["appId"] == "cli-sub" and row["pubsubname"] == "pubsub"
        assert row["status"]["consumerGroup"] == "cli-sub" and row["status"]["inFlight"] == 0
        assert row["status"]["partitions"], "the partitions this member owns"
        table = subprocess.run(
            [tidings(), "status"], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert table.startswith("APP ID") and topic in table and "cli-sub" in table
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert f'process_status="success",topic="{topic}"' in r.read().decode()
        nobody = subprocess.run(
            [tidings(), "status", "--app-id", "nope"], env=env, capture_output=True, text=True
        )
        assert nobody.returncode == 2 and "no running sidecar" in nobody.stderr
        bad = subprocess.run(
            [
                tidings(),
                "publish",
                "--app-id",
                "cli-sub",
                "--pubsub",
                "nope",
                "--topic",
                topic,
                "--data",
                "{}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 1 and "ERR_PUBSUB_NOT_FOUND" in bad.stderr
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C stops the sidecar and the app
        code = run.wait(30)
        log.close()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), (tmp_path / "run.log").read_text()
    missing = subprocess.run(
        [
            tidings(),
            "publish",
            "--app-id",
            "cli-sub",
            "--pubsub",
            "pubsub",
            "--topic",
            topic,
            "--data",
            "{}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no running sidecar" in missing.stderr
    out = subprocess.run(
        [tidings(), "uninstall"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "stopped" in out


def test_ctrl_c_in_a_terminal_stops_the_sidecar_before_the_app(
    tmp_path: Path, unique: str, kafka_bootstrap: str
) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group. ``tidings run``
    keeps its children out of that group and stops the sidecar first, so the delivery in
    flight finishes while the app still answers."""
    resources = write_component(tmp_path / "resources", kafka_bootstrap)
    topic, record_file = f"ctrlc-{unique}", tmp_path / "record.txt"
    app_port = free_port()
    env = {
        **os.environ,
        "TIDINGS_HOME": str(tmp_path / "home"),
        "APP_PORT": str(app_port),
        "TOPICS": topic,
        "DELAY_S": "2",
        "RECORD_FILE": str(record_file),
    }
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [
            tidings(),
            "run",
            "--app-id",
            f"ctrlc-{unique}",
            "--app-port",
            str(app_port),
            "--resources-path",
            str(resources),
            "--",
            sys.executable,
            str(HERE / "recorder_app.py"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own group, standing in for the terminal's foreground group
    try:

        def started() -> bool:
            sent = subprocess.run(
                [
                    tidings(),
                    "publish",
                    "--app-id",
                    f"ctrlc-{unique}",
                    "--pubsub",
                    "pubsub",
                    "--topic",
                    topic,
                    "--data",
                    "{}",
                ],
                env=env,
                capture_output=True,
            )
            return (
                sent.returncode == 0
                and record_file.exists()
                and "started" in record_file.read_text()
            )

        poll("a delivery in flight", started, 60, interval_s=0.3)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does
        assert run.wait(30) == 0, (tmp_path / "run.log").read_text()
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    lines = record_file.read_text().split()
    started_ids = {lines[1::2][i] for i, w in enumerate(lines[0::2]) if w == "started"}
    finished_ids = {lines[1::2][i] for i, w in enumerate(lines[0::2]) if w == "finished"}
    assert started_ids and started_ids <= finished_ids, record_file.read_text()


def test_demo_from_readme(tmp_path: Path) -> None:
    """The README's first command runs examples/demo.py; this runs it with fewer orders."""
    result = run_to_end(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--count", "40"],
        tmp=tmp_path,
        name="demo",
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout_s=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "orders replicas split the messages (no order at both, none missing): True" in result.stdout
    )
    assert "audit got every message: True" in result.stdout


def test_run_reports_an_app_that_exits_non_zero(tmp_path: Path, home_env: dict[str, str]) -> None:
    """Regression: ``tidings run --app-id x -- false`` stopped its sidecar and exited 1 without a
    word. The code is passed through and said on stderr; an app exiting 0 says nothing."""
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "memory.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n"
    )
    run = [tidings(), "run", "--app-id", "x", "--resources-path", str(resources), "--"]
    failed = run_to_end(
        [*run, sys.executable, "-c", "raise SystemExit(3)"],
        tmp=tmp_path,
        name="exit3",
        env=home_env,
    )
    assert failed.returncode == 3, failed.stderr
    assert "tidings run: app exited with code 3" in failed.stderr
    false = run_to_end([*run, "false"], tmp=tmp_path, name="false", env=home_env)
    assert false.returncode == 1 and "tidings run: app exited with code 1" in false.stderr
    fine = run_to_end([*run, "true"], tmp=tmp_path, name="true", env=home_env)
    assert fine.returncode == 0, fine.stderr
    assert "app exited" not in fine.stderr


def test_example_subscriber_takes_the_largest_event_the_sidecar_accepts(
    tmp_path: Path, unique: str, home_env: dict[str, str]
) -> None:
    """Regression: examples/subscriber.py (aiohttp's default 1 MiB ``client_max_size``) answered
    413 to a 3 MB event the sidecar had accepted (its --max-body-size is 4 MiB), which the
    sidecar retries forever. Also a body of exactly 4 MiB of control characters, whose JSON
    escaping makes the delivery about 24 MiB (the in-memory broker has no record limit)."""
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "memory.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n"
    )
    topic, app_port, http_port = f"big-{unique}", free_port(), free_port()
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [
            tidings(),
            "run",
            "--app-id",
            "orders",
            "--app-port",
            str(app_port),
            "--dapr-http-port",
            str(http_port),
            "--resources-path",
            str(resources),
            "--",
            sys.executable,
            str(ROOT / "examples" / "subscriber.py"),
        ],
        env={**home_env, "APP_PORT": str(app_port), "TOPIC": topic},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def subscribed() -> bool:
            try:
                _, meta = http_json(f"http://127.0.0.1:{http_port}/v1.0/metadata")
            except OSError:
                return False
            return any(s.get("topic") == topic for s in meta.get("subscriptions") or [])

        poll("the example's subscription", subscribed, 60)
        bodies = [
            (b"x" * 3_000_000, "text/plain"),
            (b"\x01" * 4 * 1024 * 1024, "text/plain"),
            (os.urandom(4 * 1024 * 1024), "application/octet-stream"),
        ]
        for body, content_type in bodies:
            status, _ = http_json(
                f"http://127.0.0.1:{http_port}/v1.0/publish/pubsub/{topic}",
                method="POST",
                body=body,
                headers={"Content-Type": content_type},
            )
            assert status == 204

        def received() -> list[str] | None:
            _, ids = http_json(f"http://127.0.0.1:{app_port}/received")
            return ids if len(ids) >= len(bodies) else None

        assert len(poll("the three large events at the app", received, 60)) == len(bodies)
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(30)
        log.close()
    assert b" 413 " not in (tmp_path / "run.log").read_bytes()


@pytest.mark.parametrize(
    "flags", [("--delivery-timeout-seconds", "-3"), ("--dapr-graceful-shutdown-seconds", "nan")]
)
def test_sidecar_refuses_nonsense_numbers(
    tmp_path: Path, home_env: dict[str, str], flags: tuple[str, str]
) -> None:
    """Regression: both started a sidecar without complaint; now argparse's exit 2."""
    done = run_to_end(
        [
            tidings(),
            "sidecar",
            "--app-id",
            "x",
            "--dapr-http-port",
            str(free_port()),
            "--dapr-grpc-port",
            str(free_port()),
            *flags,
        ],
        tmp=tmp_path,
        name="sidecar",
        env=home_env,
        timeout_s=60,
    )
    assert done.returncode == 2 and flags[0] in done.stderr, done.stderr


def test_uninstall_with_a_sidecar_running_warns_and_publish_says_unreachable(
    tmp_path: Path, home_env: dict[str, str]
) -> None:
    """The newcomer's report: `tidings uninstall` stopped the broker under a running sidecar
    without a word, and the next publish answered aiokafka internals. Like `dapr uninstall` the
    broker is stopped anyway; the running sidecars are named, and a publish says the broker is
    unreachable."""
    env = home_env
    subprocess.run(
        [tidings(), "init", "--broker-port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [
            tidings(),
            "run",
            "--app-id",
            "lonely",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(300)",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def published() -> bool:
            sent = subprocess.run(
                [
                    tidings(),
                    "publish",
                    "--app-id",
                    "lonely",
                    "--pubsub",
                    "pubsub",
                    "--topic",
                    "t",
                    "--data",
                    "{}",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            return sent.returncode == 0

        poll("the sidecar to publish", published, 60, interval_s=0.5)
        out = subprocess.run(
            [tidings(), "uninstall"], env=env, capture_output=True, text=True, check=True
        )
        assert "local broker stopped" in out.stdout
        assert f"lonely (pid {run.pid})" not in out.stderr  # the sidecar's pid, not tidings run's
        assert "warning: 1 sidecar(s)" in out.stderr and "lonely (pid " in out.stderr
        # straight to the sidecar: the producer's request timeout (30 s) is `tidings publish`'s
        port = Home(Path(env["TIDINGS_HOME"])).app_http_port("lonely")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1.0/publish/pubsub/t",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=120)
        assert answer.value.code == 500
        body = json.loads(answer.value.read())
        assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
        assert "are unreachable (" in body["message"], body
        quiet = subprocess.run(
            [tidings(), "uninstall"], env=env, capture_output=True, text=True, check=True
        )
        assert "no local broker was running" in quiet.stdout and not quiet.stderr
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(60)
        log.close()
