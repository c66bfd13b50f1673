"""Wiring (operator/main.py): JSON log lines and the two entry points."""

from __future__ import annotations

import json
import logging

import kopf

from tidings.operator.main import JsonFormatter, main


def test_json_log_line_carries_extras() -> None:
    record = logging.LogRecord(
        "tidings.operator.handlers",
        logging.INFO,
        __file__,
        1,
        "app %s config Secret %s",
        ("orders", "created"),
        None,
    )
    record.app_id = "orders"
    record.namespace = "shop"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "app orders config Secret created"
    assert line["level"] == "info" and line["logger"] == "tidings.operator.handlers"
    assert (line["app_id"], line["namespace"]) == ("orders", "shop")
    assert line["time"].endswith("Z")


def test_bad_flags_exit_2(capsys: object) -> None:
    assert main(["--webhook-cert-file", "/only-cert"]) == 2


def test_kopf_run_module_registers_on_the_default_registry() -> None:
    import tidings.operator.kopf_entry  # noqa: F401  (`kopf run -m tidings.operator.kopf_entry`)

    registry = kopf.get_default_registry()
    ids = {h.id for h in registry._webhooks.get_all_handlers()}
    assert "inject-sidecar" in ids
    assert registry._indexing.get_all_handlers()
