"""The ``tidings`` command line, run as a user would: init, run, publish, uninstall, and the
README's demo."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tidings.sidecar.localbroker import free_port

from .processes import HERE, http_json, poll

ROOT = HERE.parent.parent


def tidings() -> str:
    found = shutil.which("tidings", path=str(Path(sys.executable).parent))
    assert found, "the tidings console script is installed with the package"
    return found


def test_init_run_publish_uninstall(tmp_path: Path, unique: str) -> None:
    env = {**os.environ, "TIDINGS_HOME": str(tmp_path / "home")}
    out = subprocess.run([tidings(), "init", "--broker-port", str(free_port())], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "broker started" in out
    component = (tmp_path / "home" / "resources" / "pubsub.yaml").read_text()
    assert "pubsub.kafka" in component

    again = subprocess.run([tidings(), "init"], env=env, capture_output=True, text=True, check=True)
    assert "already running" in again.stdout

    topic = f"cli-{unique}"
    app_port = free_port()
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [tidings(), "run", "--app-id", "cli-sub", "--app-port", str(app_port), "--",
         sys.executable, str(HERE / "recorder_app.py")],
        env={**env, "APP_PORT": str(app_port), "TOPICS": topic}, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        def delivered() -> bool:
            # `tidings run` may still be starting and the group joining: publish until one
            # arrives (exit 2 means the sidecar is not registered yet)
            sent = subprocess.run([tidings(), "publish", "--app-id", "cli-sub", "--pubsub",
                                   "pubsub", "--topic", topic, "--data", '{"hello": "world"}'],
                                  env=env, capture_output=True, text=True)
            assert sent.returncode in (0, 2), sent.stderr
            if sent.returncode:
                return False
            try:
                _, body = http_json(f"http://127.0.0.1:{app_port}/received")
            except OSError:
                return False
            return bool(body["finished"])

        poll("a published event to reach the app", delivered, 60, interval_s=0.5)
        bad = subprocess.run([tidings(), "publish", "--app-id", "cli-sub", "--pubsub", "nope",
                              "--topic", topic, "--data", "{}"], env=env, capture_output=True,
                             text=True)
        assert bad.returncode == 1 and "ERR_PUBSUB_NOT_FOUND" in bad.stderr
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C stops the sidecar and the app
        code = run.wait(30)
        log.close()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), (tmp_path / "run.log").read_text()
    missing = subprocess.run([tidings(), "publish", "--app-id", "cli-sub", "--pubsub", "pubsub",
                              "--topic", topic, "--data", "{}"], env=env, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "no running sidecar" in missing.stderr
    out = subprocess.run([tidings(), "uninstall"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "stopped" in out


def test_demo_from_readme(tmp_path: Path) -> None:
    """The README's first command runs examples/demo.py; this runs it with fewer orders."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--count", "40"],
                            capture_output=True, text=True, timeout=240,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "orders replicas split the messages (no order at both, none missing): True" in result.stdout
    assert "audit got every message: True" in result.stdout
