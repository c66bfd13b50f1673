"""The README's first command: pub/sub across app-ids and replicas on a local broker.

Runs, each app behind its own sidecar started by ``tidings run``:

- ``checkout``: the publisher (examples/publisher.py), publishing ``--count`` orders;
- ``orders`` x2: two replicas of one app-id (one Kafka consumer group), examples/subscriber.py;
- ``audit`` x1: another app-id (its own consumer group).

and prints that the ``orders`` replicas split the orders between them while ``audit`` gets all.
The broker is the embedded one (``tidings init``), in a throw-away ``TIDINGS_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read() or b"null")


def wait_for(what: str, check, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError as exc:  # not up yet
            last_error = exc
        time.sleep(0.2)  # poll interval, bounded by the deadline
    raise SystemExit(
        f"demo: timed out waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


class App:
    def __init__(
        self,
        tidings: str,
        name: str,
        app_id: str,
        app_argv: list[str],
        app_port: int | None,
        env: dict[str, str],
    ) -> None:
        self.name, self.app_id, self.app_port = name, app_id, app_port
        self.http_port = free_port()
        argv = [tidings, "run", "--app-id", app_id, "--dapr-http-port", str(self.http_port)]
        if app_port:
            argv += ["--app-port", str(app_port)]
        self.log = open(Path(env["TIDINGS_HOME"]) / f"{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*argv, "--", *app_argv], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace").splitlines()[-15:]
            raise SystemExit(
                f"demo: {self.name} exited with {self.process.returncode}:\n" + "\n".join(tail)
            )

    def assignment(self) -> set[str]:
        self.check_alive()
        metadata = get_json(f"http://127.0.0.1:{self.http_port}/v1.0/metadata")
        extended = metadata.get("extended", {}) if isinstance(metadata, dict) else {}
        value = extended.get("kafka.assignment.pubsub", "")
        return {p for p in value.split(",") if p}

    def received(self) -> list[str]:
        return list(get_json(f"http://127.0.0.1:{self.app_port}/received") or [])  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="orders to publish")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args()

    tidings = shutil.which("tidings", path=str(Path(sys.executable).parent)) or shutil.which(
        "tidings"
    )
    if tidings is None:
        raise SystemExit("demo: the `tidings` command is not installed (pip install -e '.[local]')")
    home = Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    env = {**os.environ, "TIDINGS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    subprocess.run([tidings, "init", "--broker-port", str(free_port())], env=env, check=True)

    subscriber = [sys.executable, str(HERE / "subscriber.py")]
    apps = [
        App(tidings, "orders-1", "orders", subscriber, free_port(), env),
        App(tidings, "orders-2", "orders", subscriber, free_port(), env),
        App(tidings, "audit", "audit", subscriber, free_port(), env),
    ]
    orders, audit = apps[:2], apps[2]
    try:
        print(
            "waiting for the consumer groups to settle (orders: 2 members, audit: 1)...", flush=True
        )

        def orders_settled() -> bool:
            a, b = (o.assignment() for o in orders)
            return bool(a) and bool(b) and not (a & b) and len(a | b) >= 4

        wait_for("the orders group to split its partitions", orders_settled, 90)
        wait_for("the audit group to be assigned", audit.assignment, 60)
        for o in orders:
            print(f"  {o.name}: partitions {sorted(o.assignment())}", flush=True)

        publisher = App(
            tidings,
            "checkout",
            "checkout",
            [sys.executable, str(HERE / "publisher.py"), "--count", str(args.count)],
            None,
            env,
        )
        apps.append(publisher)
        wait_for("the publisher to finish", lambda: publisher.process.poll() is not None, 120)
        if publisher.process.returncode != 0:
            print(f"demo: publisher failed, see {publisher.log.name}", file=sys.stderr)
            return 1
        print(f"checkout published {args.count} orders", flush=True)

        wait_for(
            "every order to arrive",
            lambda: (
                sum(len(o.received()) for o in orders) >= args.count
                and len(audit.received()) >= args.count
            ),
            120,
        )
        got = {app.name: app.received() for app in (*orders, audit)}
        o1, o2 = set(got["orders-1"]), set(got["orders-2"])
        print()
        print(f"  orders-1 (app-id orders) received {len(got['orders-1']):4d}")
        print(f"  orders-2 (app-id orders) received {len(got['orders-2']):4d}")
        print(f"  audit    (app-id audit)  received {len(got['audit']):4d}")
        print()
        split = bool(o1) and bool(o2) and not (o1 & o2) and len(o1 | o2) == args.count
        print(f"orders replicas split the messages (no order at both, none missing): {split}")
        print(f"audit got every message: {len(set(got['audit'])) == args.count}")
        return 0 if split and len(set(got["audit"])) == args.count else 1
    finally:
        for app in reversed(apps):
            app.stop()
        subprocess.run([tidings, "uninstall"], env=env, check=False, stdout=subprocess.DEVNULL)
        if args.keep:
            print(f"logs kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
