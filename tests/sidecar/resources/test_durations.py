from __future__ import annotations

import pytest

from tidings.sidecar.resources.durations import parse_duration_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("250", 0.25),
        ("1.5s", 1.5),
        ("-2s", -2.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "10s5", "ten seconds"])
def test_invalid_durations_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_seconds(text)
