"""The benchmarks' own measuring parts: the lean HTTP client, percentiles, medians over rounds.

A wrong helper would make every benchmark figure wrong without failing, so they are checked
against a real aiohttp server and known samples.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from common import Proc, median_of, percentiles_ms
from leanhttp import LeanClient


async def test_lean_client_reads_status_and_body_over_keep_alive() -> None:
    seen: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.read())
        if request.path == "/empty":
            return web.Response(status=204)
        return web.json_response({"errorCode": "ERR_X"}, status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = LeanClient("127.0.0.1", port, size=2)
    try:
        empty = client.request_bytes("/empty", b'{"a":1}', "application/json")
        error = client.request_bytes("/error", b"x" * 5000, "text/plain")
        for _ in range(3):  # the same connections, answers of both kinds in turn
            assert await client.send(empty) == (204, b"")
            status, body = await client.send(error)
            assert status == 400 and b"ERR_X" in body
        assert seen == [b'{"a":1}', b"x" * 5000] * 3
        assert client._open <= 2
    finally:
        client.close()
        await runner.cleanup()


def test_percentiles_of_known_samples() -> None:
    samples_s = [i / 1000 for i in range(1, 1001)]  # 1..1000 ms
    p = percentiles_ms(samples_s)
    assert p["p50"] == pytest.approx(500.5, abs=0.01)
    assert p["p90"] == pytest.approx(900.1, abs=0.01)
    assert p["p99"] == pytest.approx(990.01, abs=0.01)
    assert p["p99.9"] == pytest.approx(999.001, abs=0.01)


def test_median_of_nested_rounds_keeps_text_and_lists() -> None:
    rounds = [
        {"a": {"x": 1.0, "y": 10}, "name": "s", "counts": [1]},
        {"a": {"x": 3.0, "y": 30}, "name": "s", "counts": [2]},
        {"a": {"x": 2.0, "y": 20}, "name": "s", "counts": [3]},
    ]
    assert median_of(rounds) == {"a": {"x": 2.0, "y": 20}, "name": "s", "counts": [1]}


def test_proc_reads_this_process() -> None:
    me = Proc(os.getpid())
    assert me.cpu_s() > 0
    assert 10 * 2**20 < me.rss_bytes() <= me.peak_rss_bytes()


def test_save_results_writes_settings_without_the_json_path_then_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import json

    from common import save_results

    target = tmp_path / "out.json"
    args = argparse.Namespace(messages=10, json=str(target))
    assert save_results("demo", args, {"cores": 2}, median={"x": 1.0}, rounds=[]) == target
    saved = json.loads(target.read_text())
    assert list(saved) == ["benchmark", "machine", "settings", "median", "rounds"]
    assert saved["benchmark"] == "demo" and saved["settings"] == {"messages": 10}
    assert f"results: {target}" in capsys.readouterr().out
