"""Start-up footprint guards: what the sidecar must not load until it needs it."""

from __future__ import annotations

import subprocess
import sys


def test_sidecar_without_rules_does_not_load_cel() -> None:
    # `import cel` also loads its interactive CLI (prompt_toolkit): 14 MB of RSS and ~75 ms of
    # cold start for a sidecar whose subscriptions have no routing rules (benchmarks/footprint.py).
    code = ("import sys, tidings.sidecar.runner, tidings.sidecar.cli\n"
            "loaded = sorted(m for m in ('cel', 'prompt_toolkit') if m in sys.modules)\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_sidecar_loads_broker_clients_only_for_their_components() -> None:
    # redis-py and nats-py cost ~16 MB of RSS together in a sidecar that has no such component
    # (found when the footprint benchmark went from 56 to 88 MB idle after the brokers landed).
    code = ("import sys, tidings.sidecar.runner, tidings.sidecar.cli\n"
            "loaded = sorted(m for m in ('redis', 'nats') if m in sys.modules)\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_rules_still_compile_and_route_after_the_lazy_import() -> None:
    code = ("from tidings.sidecar.resources.models import Route, TopicSubscription\n"
            "from tidings.sidecar.routing import Routes\n"
            "sub = TopicSubscription('p', 't', rules=(Route('event.type == \"a\"', '/a'),),"
            " default_path='/d')\n"
            "r = Routes.compile(sub)\n"
            "print(r.select({'type': 'a'}), r.select({'type': 'b'}))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["/a", "/d"], out.stderr
