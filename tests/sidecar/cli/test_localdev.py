"""The local-development state folder (``tidings init`` / ``tidings run``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tidings.sidecar.cli.localdev import Home, kafka_component_yaml
from tidings.sidecar.resources import load_resources


def test_replicas_of_one_app_id_each_register(tmp_path: Path) -> None:
    home = Home(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    home.register_app("orders", http_port=3501, pid=gone.pid)  # a replica that has exited
    home.register_app("orders", http_port=3502, pid=os.getpid())
    assert home.app_http_port("orders") == 3502
    home.unregister_app("orders", pid=os.getpid())
    assert home.app_http_port("orders") is None
    assert home.app_files("orders") == []  # the dead replica's file was cleaned up


def test_init_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is already in use"):
            Home(tmp_path).init(port=port)


def test_component_yaml_loads_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(
        kafka_component_yaml("127.0.0.1:9092", metadata={"sessionTimeout": "3s"})
    )
    kafka = load_resources([tmp_path], app_id="a").components["pubsub"].kafka
    assert kafka is not None
    assert kafka.brokers == ("127.0.0.1:9092",) and kafka.session_timeout_s == 3.0
    assert kafka.initial_offset == "oldest"
