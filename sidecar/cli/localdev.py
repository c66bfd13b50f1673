"""Local development outside Kubernetes: the ``tidings init`` / ``tidings run`` state folder.

Like ``~/.dapr``, ``$TIDINGS_HOME`` (default ``~/.tidings``) holds:

- ``resources/pubsub.yaml``: the default ``pubsub`` Component, written by ``tidings init`` and
  pointing at the local broker; ``tidings run`` reads this folder unless given
  ``--resources-path``;
- ``broker.json``: pid and address of the local broker started by ``tidings init``;
- ``apps/<app-id>.<pid>.json``: pid and HTTP port of each sidecar ``tidings run`` started,
  so ``tidings publish --app-id`` and ``tidings status`` find it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .localbroker import kafka_api_versions_ok, start_local_broker

__all__ = ["Home", "home", "kafka_component_yaml"]

DEFAULT_BROKER_PORT = 9092

# A group that has never committed starts at the oldest record, so nothing published before a
# subscriber's first start is missed in local runs (Dapr's default is newest). Shorter group
# timeouts than Dapr's 10 s / 3 s make a local group settle faster after a restart.
LOCAL_KAFKA_METADATA = {
    "authType": "none",
    "initialOffset": "oldest",
    "sessionTimeout": "6s",
    "heartbeatInterval": "2s",
}


def kafka_component_yaml(
    bootstrap: str, *, name: str = "pubsub", metadata: Mapping[str, str] | None = None
) -> str:
    """A ``pubsub.kafka`` Component for the broker at ``bootstrap`` (``host:port``), with
    :data:`LOCAL_KAFKA_METADATA` overridden by ``metadata``; what ``tidings init`` writes."""
    values = {"brokers": bootstrap, **LOCAL_KAFKA_METADATA, **(metadata or {})}
    items = "".join(
        f"  - name: {key}\n    value: {json.dumps(value)}\n" for key, value in values.items()
    )
    return (
        "# Written by tidings: a pub/sub component on a Kafka-compatible broker.\n"
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata:\n  name: {name}\nspec:\n  type: pubsub.kafka\n  version: v1\n"
        f"  metadata:\n{items}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Home:
    """The state folder. All methods are synchronous and cheap."""

    root: Path

    @property
    def resources(self) -> Path:
        return self.root / "resources"

    @property
    def broker_file(self) -> Path:
        return self.root / "broker.json"

    def app_files(self, app_id: str) -> list[Path]:
        """One file per running sidecar of ``app_id`` (replicas each have their own)."""
        return sorted((self.root / "apps").glob(f"{app_id}.*.json"))

    # --- broker ------------------------------------------------------------------------------
    def broker(self) -> dict[str, object] | None:
        """The running local broker's ``{"pid", "host", "port"}``, or ``None``."""
        try:
            info = json.loads(self.broker_file.read_text())
        except (OSError, ValueError):
            return None
        if _pid_alive(int(info["pid"])) and kafka_api_versions_ok(
            str(info["host"]), int(info["port"])
        ):
            return dict(info)
        return None

    def init(self, *, port: int = DEFAULT_BROKER_PORT) -> tuple[str, bool]:
        """Start the local broker (unless one runs) and write the default component.

        Returns ``(bootstrap, started_now)``. Raises ``RuntimeError`` when the broker cannot start
        (for example the port is taken by something else).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        running = self.broker()
        if running is not None:
            bootstrap = f"{running['host']}:{running['port']}"
            started = False
        else:
            if not _port_free(port):
                raise RuntimeError(f"port {port} is already in use; pass --broker-port")
            broker = start_local_broker(port=port, log_path=self.root / "broker.log")
            # The broker outlives this command, like `dapr init`'s containers.
            self.broker_file.write_text(
                json.dumps({"pid": broker.process.pid, "host": broker.host, "port": broker.port})
            )
            bootstrap, started = broker.bootstrap, True
        self.resources.mkdir(parents=True, exist_ok=True)
        component = self.resources / "pubsub.yaml"
        component.write_text(kafka_component_yaml(bootstrap))
        return bootstrap, started

    def uninstall(self) -> bool:
        """Stop the local broker started by :meth:`init`; True if one was stopped."""
        info = self.broker()
        self.broker_file.unlink(missing_ok=True)
        if info is None:
            return False
        pid = int(info["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the broker process to exit, bounded
        return True

    # --- apps --------------------------------------------------------------------------------
    def register_app(self, app_id: str, *, http_port: int, pid: int) -> None:
        path = self.root / "apps" / f"{app_id}.{pid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"app_id": app_id, "http_port": http_port, "pid": pid}))

    def unregister_app(self, app_id: str, *, pid: int) -> None:
        (self.root / "apps" / f"{app_id}.{pid}.json").unlink(missing_ok=True)

    def app_http_port(self, app_id: str) -> int | None:
        """The HTTP port of a running sidecar of ``app_id`` started by ``tidings run`` (any
        replica), or ``None``. Files of sidecars that are gone are removed."""
        for path in self.app_files(app_id):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _pid_alive(int(info["pid"])):
                return int(info["http_port"])
            path.unlink(missing_ok=True)
        return None

    def running_sidecars(self) -> list[dict[str, Any]]:
        """Every running sidecar ``tidings run`` started, as ``{"app_id", "http_port",
        "pid"}``, sorted by app-id then pid (``tidings status``). Files of sidecars that are
        gone are removed."""
        found: list[dict[str, Any]] = []
        for path in sorted((self.root / "apps").glob("*.json")):
            try:
                info = json.loads(path.read_text())
                pid = int(info["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _pid_alive(pid):
                found.append(info)
            else:
                path.unlink(missing_ok=True)
        return sorted(found, key=lambda i: (str(i["app_id"]), int(i["pid"])))


def home() -> Home:
    """The state folder from ``$TIDINGS_HOME``, default ``~/.tidings``."""
    return Home(Path(os.environ.get("TIDINGS_HOME") or Path.home() / ".tidings"))


def sidecar_command(*args: str) -> list[str]:
    """argv that runs a sidecar with this interpreter (what ``tidings sidecar`` does).

    ``-P`` keeps the working directory off ``sys.path``: ``tidings run`` starts the sidecar in
    the app's folder, whose own modules (an ``app.py`` is harmless, a ``redis.py`` or
    ``types.py`` is not) would otherwise shadow what the sidecar imports.
    """
    return [sys.executable, "-P", "-m", "tidings.sidecar", *args]
