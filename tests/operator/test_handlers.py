"""The writer's decisions in operator/handlers.py that need no API server: what it logs.

The Secrets API is a FAKE here (an in-memory ``CoreV1Api`` with the three calls ``sync_app``
makes); writing against a real API server is covered by tests/cluster/test_appconfig.py.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from tidings.operator.handlers import Reconciler
from tidings.operator.leadership import LeaderElector


class FakeCore:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        from kubernetes.client import ApiException

        body = self.secrets.get((namespace, name))
        if body is None:
            raise ApiException(status=404)
        return SimpleNamespace(
            data=body["data"],
            metadata=SimpleNamespace(labels=body["metadata"]["labels"], resource_version="1"),
        )

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets[(namespace, body["metadata"]["name"])] = body

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.secrets[(namespace, name)] = body


def comp() -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "pubsub", "namespace": "ns"},
        "spec": {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [
                {"name": "brokers", "value": "k:9092"},
                {"name": "authType", "value": "none"},
            ],
        },
    }


def sub(name: str, topic: str) -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"pubsubname": "pubsub", "topic": topic, "routes": {"default": "/e"}},
    }


def test_left_out_problems_are_logged_when_they_change_not_on_every_resync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found on a real cluster: every resync re-logged each problem for every app."""
    rec = Reconciler(
        core=FakeCore(), custom=None, leader=LeaderElector(None, namespace="", name="", identity="")
    )
    subs = [sub("good", "t"), sub("bad", "")]
    rec.attach({("ns", "a"): ["a-1"], ("ns", "b"): ["b-1"]}, {"ns": [comp()]}, {"ns": subs})

    def left_out() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        caplog.clear()
        return lines

    with caplog.at_level(logging.INFO, logger="tidings.operator.handlers"):
        for app in ("a", "b"):
            rec.sync_app("ns", app)
        first = left_out()
        assert len(first) == 2 and all("ns/bad" in line for line in first)
        for _ in range(3):  # resyncs
            for app in ("a", "b"):
                assert rec.sync_app("ns", app) == "unchanged"
        assert left_out() == []
        subs.append(sub("worse", ""))  # a new problem is logged, the old one not again
        rec.sync_app("ns", "a")
        again = left_out()
        assert len(again) == 1 and "ns/worse" in again[0]
