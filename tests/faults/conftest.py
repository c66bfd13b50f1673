"""Fixtures of the fault suite, and the table of counts printed at the end of the session.

Every scenario reports one row through the ``counts`` fixture: published, acknowledged to the
publisher (204, or the broker's ack for a foreign producer), delivered (distinct events the app
acknowledged), lost (acknowledged but never delivered: must be 0) and duplicated (deliveries
beyond the first of an event). ``pytest_terminal_summary`` prints the rows of the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..integration.processes import write_component


@dataclass
class Counts:
    scenario: str
    published: int
    acked: int
    delivered: int
    lost: int
    duplicated: int
    note: str = ""


_ROWS: list[Counts] = []


class CountSheet:
    """One scenario's counts; :meth:`tally` computes them from ids and the apps' deliveries."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def tally(
        self, *, published: int, acked: Iterable[str], finished: Iterable[str], note: str = ""
    ) -> Counts:
        """``acked``: ids acknowledged to the publisher; ``finished``: every delivery the apps
        acknowledged, repeats included. Records the row and returns it."""
        acked_ids = set(acked)
        deliveries = list(finished)
        delivered = set(deliveries) & acked_ids
        row = Counts(
            self.scenario,
            published,
            len(acked_ids),
            len(delivered),
            len(acked_ids - delivered),
            sum(1 for d in deliveries if d in acked_ids) - len(delivered),
            note,
        )
        _ROWS[:] = [r for r in _ROWS if r.scenario != self.scenario] + [row]
        return row


@pytest.fixture
def counts(request: pytest.FixtureRequest) -> CountSheet:
    return CountSheet(request.node.name.removeprefix("test_"))


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    return write_component(tmp_path / "resources", kafka_bootstrap)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    tr = terminalreporter
    tr.write_sep("=", "fault suite: every message counted")
    header = (
        f"{'scenario':<44} {'published':>9} {'acked':>7} {'delivered':>9} {'lost':>5} "
        f"{'dup':>5}  note"
    )
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for r in _ROWS:
        tr.write_line(
            f"{r.scenario[:44]:<44} {r.published:>9} {r.acked:>7} {r.delivered:>9} "
            f"{r.lost:>5} {r.duplicated:>5}  {r.note}"
        )
