"""Start-up footprint guards: what the sidecar must not load until it needs it."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules",
    [
        # `import cel` also loads its interactive CLI (prompt_toolkit): 14 MB of RSS and ~75 ms of
        # cold start for a sidecar whose subscriptions have no routing rules.
        ("cel", "prompt_toolkit"),
        # redis-py and nats-py: ~16 MB of RSS in a sidecar without such a component (found when the
        # footprint benchmark went from 56 to 88 MB idle after the two brokers landed).
        ("redis", "nats"),
    ],
    ids=["cel", "broker-clients"],
)
def test_sidecar_start_up_does_not_load(modules: tuple[str, ...]) -> None:
    """What benchmarks/footprint.py measures stays small: these load only when needed."""
    code = (
        "import sys, tidings.sidecar.runtime.runner, tidings.sidecar.cli.main\n"
        f"loaded = sorted(m for m in {modules!r} if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_rules_still_compile_and_route_after_the_lazy_import() -> None:
    code = (
        "from tidings.sidecar.resources.models import Route, TopicSubscription\n"
        "from tidings.sidecar.delivery.routing import Routes\n"
        "sub = TopicSubscription('p', 't', rules=(Route('event.type == \"a\"', '/a'),),"
        " default_path='/d')\n"
        "r = Routes.compile(sub)\n"
        "print(r.select({'type': 'a'}), r.select({'type': 'b'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["/a", "/d"], out.stderr
