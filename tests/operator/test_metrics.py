"""Operator metrics: admission requests and latency by outcome, counted where the webhook
answers (``AdmissionServer._serve``, served here by a real aiohttp server on loopback).

kopf's admission engine is replaced by a plain function with its calling convention (``fn(review,
webhook=..., headers=..., sslpeer=...)`` returning the AdmissionReview answer): the engine needs
a running operator and API server, which ``tests/cluster`` covers.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import aiohttp.web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from tidings.operator.injection import AdmissionServer
from tidings.operator.metrics import admission_outcome


def count(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("tidings_operator_admission_requests_total", {"outcome": outcome})
        or 0.0
    )


def latencies(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "tidings_operator_admission_latency_seconds_count", {"outcome": outcome}
        )
        or 0.0
    )


REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u1",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "userInfo": {},
        "object": {"metadata": {}},
    },
}


async def engine(review: Any, **_: Any) -> dict[str, Any]:
    patch = base64.b64encode(b'[{"op": "add", "path": "/x", "value": 1}]').decode()
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": review["request"]["uid"],
            "allowed": True,
            "patch": patch,
            "patchType": "JSONPatch",
        },
    }


async def test_admissions_are_counted_by_outcome() -> None:
    app = aiohttp.web.Application()

    async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await AdmissionServer._serve(engine, request)

    app.router.add_post("/{id:.*}", serve)
    before = {o: (count(o), latencies(o)) for o in ("injected", "malformed")}
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/inject-sidecar"), json=REVIEW) as r:
            assert r.status == 200 and (await r.json())["response"]["allowed"] is True
        async with session.post(
            server.make_url("/inject-sidecar"),
            data=b"{",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
    assert count("injected") - before["injected"][0] == 1
    assert latencies("injected") - before["injected"][1] == 1
    assert count("malformed") - before["malformed"][0] == 1


def test_admission_outcome_reads_the_answer() -> None:
    def answer(response: dict[str, Any]) -> bytes:
        return json.dumps({"kind": "AdmissionReview", "response": response}).encode()

    assert admission_outcome(200, answer({"allowed": True})) == "allowed"
    assert admission_outcome(200, answer({"allowed": True, "patch": "W10="})) == "injected"
    assert admission_outcome(200, answer({"allowed": False, "status": {"code": 400}})) == "refused"
    assert admission_outcome(200, answer({"allowed": False, "status": {"code": 500}})) == "error"
    assert admission_outcome(415, b"{}") == "malformed"
    assert admission_outcome(500, None) == "error"
