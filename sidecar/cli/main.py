"""The ``tidings`` command line.

- ``tidings sidecar [daprd flags]``: run one sidecar (what the operator injects as ``daprd``).
- ``tidings init``: start the local Kafka-compatible broker and write the default ``pubsub``
  Component (like ``dapr init``); ``tidings uninstall`` stops it.
- ``tidings run --app-id ID [--app-port N] [--app-protocol http|grpc] [--resources-path DIR]
  [--dapr-http-port N] [--dapr-grpc-port N] -- CMD``: start a sidecar, then the app with
  ``DAPR_HTTP_PORT``, ``DAPR_GRPC_PORT`` and ``APP_PROTOCOL`` set; Ctrl-C stops both (like
  ``dapr run``).
- ``tidings publish --app-id ID --pubsub NAME --topic T --data JSON``: publish through the
  running sidecar of ``ID``.
- ``tidings status [--app-id ID] [--output table|json]``: per subscription of every running
  sidecar (``tidings run``): consumer group, assigned partitions, lag, in-flight deliveries and
  the last error, from each sidecar's ``GET /v1.0/metadata``.
- ``tidings operator [...]``: the Kubernetes operator (``tidings.operator``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from ..runtime.logs import configure_logging
from ..runtime.settings import (
    APP_PROTOCOLS,
    LOG_LEVELS,
    add_sidecar_arguments,
    app_id_arg,
    port_arg,
    seconds_arg,
    settings_from_args,
)
from .localbroker import free_port
from .localdev import home, sidecar_command

__all__ = ["main"]


def _cmd_sidecar(args: argparse.Namespace) -> int:
    from ..runtime.runner import run_sidecar

    settings = settings_from_args(args)
    configure_logging(settings.log_level, as_json=settings.log_as_json)
    return run_sidecar(settings)


def _cmd_init(args: argparse.Namespace) -> int:
    state = home()
    try:
        bootstrap, started = state.init(port=args.broker_port)
    except RuntimeError as exc:
        print(f"tidings init: {exc}", file=sys.stderr)
        return 1
    verb = "started" if started else "already running"
    print(f"local Kafka-compatible broker {verb} at {bootstrap}")
    print(f"default component 'pubsub' written to {state.resources / 'pubsub.yaml'}")
    return 0


def _cmd_uninstall(_: argparse.Namespace) -> int:
    # Like `dapr uninstall`, stop the broker even while sidecars run, but say which ones lose it.
    state = home()
    using = state.running_sidecars() if state.broker() is not None else []
    stopped = state.uninstall()
    print("local broker stopped" if stopped else "no local broker was running")
    if stopped and using:
        names = ", ".join(f"{s['app_id']} (pid {s['pid']})" for s in using)
        print(
            f"tidings uninstall: warning: {len(using)} sidecar(s) started by `tidings run` are "
            f"still running and cannot publish or consume through the local broker until "
            f"`tidings init`: {names}",
            file=sys.stderr,
        )
    return 0


def _wait_serving(
    url: str, deadline_s: float, proc: subprocess.Popen[bytes], stop: Callable[[], bool]
) -> bool:
    """Poll ``url`` until the sidecar answers with any HTTP status (its API serves, even while
    a broker is still unreachable), the process exits, ``stop()`` turns true, or the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not stop():
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)  # poll interval while the sidecar starts, bounded by the deadline
    return False


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    state = home()
    http_port = args.dapr_http_port or free_port()
    grpc_port = args.dapr_grpc_port or free_port()
    resources = list(args.resources_path) or (
        [str(state.resources)] if state.resources.is_dir() else []
    )
    if not resources:
        print(
            "tidings run: no --resources-path and no default components; run `tidings init` first",
            file=sys.stderr,
        )
        return 2
    sidecar_argv = [
        "--app-id",
        args.app_id,
        "--dapr-http-port",
        str(http_port),
        "--dapr-grpc-port",
        str(grpc_port),
        # its own health port too: daprd's default 3501 would be shared by every sidecar here
        "--dapr-public-port",
        str(free_port()),
        "--log-level",
        args.log_level,
        "--dapr-graceful-shutdown-seconds",
        str(args.graceful_shutdown_seconds),
    ]
    for path in resources:
        sidecar_argv += ["--resources-path", path]
    if args.app_port:
        sidecar_argv += ["--app-port", str(args.app_port)]
    if args.app_protocol != "http":
        sidecar_argv += ["--app-protocol", args.app_protocol]
    if args.log_as_json:
        sidecar_argv.append("--log-as-json")
    if args.metrics_port:
        sidecar_argv += ["--enable-metrics", "--metrics-port", str(args.metrics_port)]
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops the sidecar
    # first (it drains in-flight deliveries while the app still answers) and the app after it.
    sidecar = subprocess.Popen(sidecar_command(*sidecar_argv), start_new_session=True)
    app: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        if not _wait_serving(
            f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound",
            60,
            sidecar,
            lambda: stop_requested,
        ):
            if not stop_requested:
                print(f"tidings run: the sidecar of {args.app_id} did not start", file=sys.stderr)
                code = 1
            return code
        state.register_app(args.app_id, http_port=http_port, pid=sidecar.pid)
        print(
            f"tidings run: sidecar of {args.app_id} serving on port {http_port} (gRPC {grpc_port})",
            file=sys.stderr,
            flush=True,
        )
        if command:
            env = {
                **os.environ,
                "DAPR_HTTP_PORT": str(http_port),
                "DAPR_GRPC_PORT": str(grpc_port),
                "APP_ID": args.app_id,
            }
            if args.app_port:
                env["APP_PORT"] = str(args.app_port)
            env["APP_PROTOCOL"] = args.app_protocol  # as `dapr run` hands it to the app
            try:
                app = subprocess.Popen(command, env=env, start_new_session=True)
            except OSError as exc:
                print(f"tidings run: cannot start {command[0]!r}: {exc}", file=sys.stderr)
                return 1
        while not stop_requested:
            if sidecar.poll() is not None:
                print(f"tidings run: sidecar exited with {sidecar.returncode}", file=sys.stderr)
                code = sidecar.returncode or 1
                break
            if app is not None and app.poll() is not None:
                code = app.returncode
                if code > 0:
                    print(f"tidings run: app exited with code {code}", file=sys.stderr)
                elif code < 0:  # Popen's returncode for a death by signal N is -N
                    print(f"tidings run: app was killed by signal {-code}", file=sys.stderr)
                break
            time.sleep(0.1)  # supervision tick: check both children
    finally:
        # Sidecar first: it stops fetching and lets in-flight deliveries to the app finish.
        _terminate(sidecar, args.graceful_shutdown_seconds + 10)
        _terminate(app, 10)
        state.unregister_app(args.app_id, pid=sidecar.pid)
    return code


def _cmd_publish(args: argparse.Namespace) -> int:
    port = args.dapr_http_port or home().app_http_port(args.app_id)
    if port is None:
        print(
            f"tidings publish: no running sidecar for app-id {args.app_id!r} "
            "(start it with `tidings run`, or pass --dapr-http-port)",
            file=sys.stderr,
        )
        return 2
    bad = [m for m in args.metadata if "=" not in m]
    if bad:
        print(f"tidings publish: --metadata takes key=value, got {bad[0]!r}", file=sys.stderr)
        return 2
    query = urllib.parse.urlencode(
        {f"metadata.{k}": v for k, v in (m.split("=", 1) for m in args.metadata)}
    )
    topic = urllib.parse.quote(args.topic, safe="/")
    url = f"http://127.0.0.1:{port}/v1.0/publish/{urllib.parse.quote(args.pubsub, safe='')}/{topic}"
    if query:
        url += f"?{query}"
    data = args.data.encode()
    content_type = args.content_type
    if content_type is None:
        try:
            json.loads(args.data)
            content_type = "application/json"
        except ValueError:
            content_type = "text/plain"
    headers = {"Content-Type": content_type}
    if os.environ.get("DAPR_API_TOKEN"):
        headers["dapr-api-token"] = os.environ["DAPR_API_TOKEN"]
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        print(f"tidings publish: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"tidings publish: cannot reach the sidecar on port {port}: {exc}", file=sys.stderr)
        return 1
    print("event published")
    return 0


def _sidecar_metadata(port: int) -> dict[str, Any]:
    """``GET /v1.0/metadata`` of the sidecar on ``port``. Raises ``OSError``/``ValueError``."""
    headers = {}
    if os.environ.get("DAPR_API_TOKEN"):
        headers["dapr-api-token"] = os.environ["DAPR_API_TOKEN"]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1.0/metadata", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    if not isinstance(body, dict):
        raise ValueError("the metadata answer is not a JSON object")
    return body


def _status_rows(sidecars: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per subscription of each sidecar (``status`` as in ``GET /v1.0/metadata``), or
    one row with ``error`` for a sidecar that did not answer or has no subscription."""
    rows: list[dict[str, Any]] = []
    for info in sidecars:
        row = {"appId": info["app_id"], "pid": info["pid"], "port": info["http_port"]}
        try:
            meta = _sidecar_metadata(int(info["http_port"]))
        except (OSError, ValueError) as exc:
            rows.append({**row, "error": f"sidecar unreachable: {exc}"})
            continue
        subscriptions = meta.get("subscriptions") or []
        if not subscriptions:
            rows.append({**row, "error": "no subscriptions"})
        for sub in subscriptions:
            rows.append(
                {
                    **row,
                    "pubsubname": sub.get("pubsubname"),
                    "topic": sub.get("topic"),
                    "status": sub.get("status") or {},
                }
            )
    return rows


def _status_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "APP ID",
        "PID",
        "PUBSUB",
        "TOPIC",
        "CONSUMER GROUP",
        "PARTITIONS",
        "LAG",
        "IN-FLIGHT",
        "LAST ERROR",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        status = row.get("status") or {}
        partitions = ",".join(str(p["partition"]) for p in status.get("partitions") or [])
        error = row.get("error") or (status.get("lastError") or {}).get("message") or "-"
        lines.append(
            (
                str(row["appId"]),
                str(row["pid"]),
                str(row.get("pubsubname") or "-"),
                str(row.get("topic") or "-"),
                str(status.get("consumerGroup") or "-"),
                partitions or "-",
                str(status.get("lag", "-")),
                str(status.get("inFlight", "-")),
                str(error),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]
        for line in lines
    )


def _cmd_status(args: argparse.Namespace) -> int:
    sidecars = [
        s for s in home().running_sidecars() if args.app_id is None or s["app_id"] == args.app_id
    ]
    if not sidecars:
        which = f" for app-id {args.app_id!r}" if args.app_id else ""
        print(
            f"tidings status: no running sidecar{which} (start one with `tidings run`)",
            file=sys.stderr,
        )
        return 2
    rows = _status_rows(sidecars)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(_status_table(rows))
    return 1 if any("error" in r and r["error"] != "no subscriptions" for r in rows) else 0


def _cmd_operator(args: argparse.Namespace) -> int:
    try:
        from tidings.operator.main import main as operator_main
    except ImportError as exc:
        print(f"tidings operator: {exc}; install the 'operator' extra", file=sys.stderr)
        return 2
    return int(operator_main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Dapr's publish/subscribe building block on Kafka: the sidecar, local "
        "development (init, run, publish) and the Kubernetes operator.",
    )
    sub = parser.add_subparsers(dest="command_name", required=True)

    p = sub.add_parser("sidecar", help="run one sidecar (daprd-compatible flags)")
    add_sidecar_arguments(p)
    p.set_defaults(func=_cmd_sidecar)

    p = sub.add_parser("init", help="start the local broker and write the default component")
    p.add_argument("--broker-port", type=port_arg, default=9092)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser(
        "uninstall",
        help="stop the local broker started by `tidings init` (warns about sidecars still running)",
    )
    p.set_defaults(func=_cmd_uninstall)

    p = sub.add_parser("run", help="run an app with its sidecar")
    p.add_argument("--app-id", required=True, type=app_id_arg)
    p.add_argument("--app-port", type=port_arg, default=None)
    p.add_argument(
        "--app-protocol",
        default="http",
        choices=APP_PROTOCOLS,
        help="how the sidecar calls the app: http, or grpc (Dapr's AppCallback)",
    )
    p.add_argument("--resources-path", action="append", default=[])
    p.add_argument("--dapr-http-port", type=port_arg, default=None)
    p.add_argument(
        "--dapr-grpc-port",
        type=port_arg,
        default=None,
        help="port of the sidecar's Dapr gRPC API (default: a free port)",
    )
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    p.add_argument("--log-as-json", action="store_true")
    p.add_argument("--graceful-shutdown-seconds", type=seconds_arg(positive=False), default=5.0)
    p.add_argument(
        "--metrics-port",
        type=port_arg,
        default=None,
        help="serve the sidecar's Prometheus /metrics on this port (default: none)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD... (the app)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("publish", help="publish an event through a running sidecar")
    p.add_argument("--app-id", required=True)
    p.add_argument("--pubsub", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--content-type", default=None)
    p.add_argument("--metadata", action="append", default=[], help="key=value (repeatable)")
    p.add_argument("--dapr-http-port", type=port_arg, default=None)
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser(
        "status",
        help="subscriptions of the running sidecars: consumer group, "
        "partitions, lag, in-flight deliveries, last error",
    )
    p.add_argument("--app-id", default=None, help="only the sidecars of this app-id")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tidings`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:  # REMAINDER does not take leading --flags: hand them all over
        return _cmd_operator(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args))
