"""A delivery that keeps failing or never answers (issue 5, scenarios 3 and 5). Real processes:
``python -m tidings.sidecar``, ``recorder_app.py``, the session's Tansu."""

from __future__ import annotations

from pathlib import Path

from ..integration.processes import Proc, assignment, poll, received, start_app, start_sidecar
from .conftest import CountSheet
from .kit import attempts, produce_events, set_mode


def _tries(app: Proc, event_id: str) -> list[dict]:
    return [a for a in attempts(app) if a["id"] == event_id]


def test_retry_loop_stops_when_the_partition_moves(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """3. The app answers RETRY for one message per partition; a second replica joins during the
    retry loops. A message whose partition moved is not committed by the old owner, the new
    owner delivers it, and the old owner's loop stopped before the new owner's first attempt
    (never two replicas on one offset at once)."""
    topic, app_id = f"moving-{unique}", f"moving-{unique}"
    old_app = start_app(tmp_path, "old", topics=[topic])
    new_app = start_app(tmp_path, "new", topics=[topic])
    procs += [old_app, new_app]
    stuck = [f"{unique}-stuck-{p}" for p in range(4)]
    followers = [f"{unique}-after-{p}" for p in range(4)]
    set_mode(old_app, retry=stuck)  # the old replica's app fails them, the new one does not
    old = start_sidecar(tmp_path, "old", app_id=app_id, resources=resources, app_port=old_app.port)
    procs.append(old)
    poll("the first replica to own every partition", lambda: len(assignment(old)) == 4, 60)
    for p in range(4):
        produce_events(kafka_bootstrap, topic, [stuck[p], followers[p]], partition=p)
    poll(
        "every stuck message to be in its retry loop",
        lambda: all(len(_tries(old_app, s)) >= 2 for s in stuck),
        60,
    )

    new = start_sidecar(tmp_path, "new", app_id=app_id, resources=resources, app_port=new_app.port)
    procs.append(new)

    def split() -> set[str] | None:
        a, b = assignment(old), assignment(new)
        return b if a and b and not (a & b) and len(a | b) == 4 else None

    moved_parts = {int(p.rsplit(":", 1)[1]) for p in poll("the group to split", split, 60)}
    moved = [stuck[p] for p in sorted(moved_parts)]
    kept = [s for s in stuck if s not in moved]
    poll(
        "the new owner to deliver the moved messages",
        lambda: set(received(new_app)["finished"]) >= set(moved),
        60,
    )
    snapshot = {s: len(_tries(old_app, s)) for s in moved}
    kept_before = {s: len(_tries(old_app, s)) for s in kept}
    # The old owner keeps retrying what it kept: wait for two more tries of each, then check
    # it made none of the moved ones meanwhile.
    poll(
        "the old owner to keep retrying what it kept",
        lambda: all(len(_tries(old_app, s)) >= kept_before[s] + 2 for s in kept),
        60,
    )
    for s in moved:
        old_tries, new_tries = _tries(old_app, s), _tries(new_app, s)
        assert len(old_tries) == snapshot[s], f"old owner still retries {s}"
        assert all(t["t1"] is not None for t in old_tries)
        assert max(t["t1"] for t in old_tries) <= min(t["t0"] for t in new_tries), (
            f"{s}: the old owner was still working on it when the new owner started"
        )
    assert not set(moved) & set(received(old_app)["finished"])

    set_mode(old_app)  # the old replica's app recovers: what it kept goes through too
    everything = stuck + followers
    poll(
        "everything to be delivered",
        lambda: (
            set(received(old_app)["finished"] + received(new_app)["finished"]) >= set(everything)
        ),
        60,
    )
    row = counts.tally(
        published=len(everything),
        acked=everything,
        finished=received(old_app)["finished"] + received(new_app)["finished"],
        note=f"{len(moved)} moved mid-retry",
    )
    assert row.lost == 0 and row.duplicated == 0


def test_hanging_app_holds_only_its_partition(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """5. The app never answers one message: the delivery times out (--delivery-timeout-seconds)
    and is retried; the rest of its partition waits, other partitions keep flowing."""
    topic, app_id = f"hang-{unique}", f"hang-{unique}"
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    hung = f"{unique}-hung"
    behind = [f"{unique}-behind-{n}" for n in range(10)]
    elsewhere = [f"{unique}-elsewhere-{n}" for n in range(30)]
    set_mode(app, hang=[hung])
    sidecar = start_sidecar(
        tmp_path,
        "sub",
        app_id=app_id,
        resources=resources,
        app_port=app.port,
        extra=["--delivery-timeout-seconds", "1"],
    )
    procs.append(sidecar)
    poll("the member to be assigned", lambda: len(assignment(sidecar)) == 4, 60)
    produce_events(kafka_bootstrap, topic, [hung, *behind], partition=0)
    for p in (1, 2, 3):
        produce_events(kafka_bootstrap, topic, elsewhere[(p - 1) * 10 : p * 10], partition=p)

    poll("the hung delivery to time out and be retried", lambda: len(_tries(app, hung)) >= 3, 60)
    poll(
        "the other partitions to flow", lambda: set(received(app)["finished"]) >= set(elsewhere), 60
    )
    assert not set(behind) & set(received(app)["started"]), "its partition waits behind it"
    tries_while_hung = len(_tries(app, hung))

    set_mode(app)  # the app answers again
    poll(
        "the hung message and its partition to be delivered",
        lambda: set(received(app)["finished"]) >= {hung, *behind},
        60,
    )
    gone = poll(
        "the released requests to be answered",
        lambda: [t for t in _tries(app, hung)[: tries_while_hung - 1] if t["t1"]],
        10,
    )
    assert all(t["answer"] == "gone" for t in gone), (
        "the sidecar had given up on every earlier request (timeout) before retrying"
    )
    finished = received(app)["finished"]
    assert [finished.index(i) for i in [hung, *behind]] == sorted(
        finished.index(i) for i in [hung, *behind]
    ), "in partition order"
    everything = [hung, *behind, *elsewhere]
    row = counts.tally(
        published=len(everything),
        acked=everything,
        finished=finished,
        note=f"{len(_tries(app, hung))} tries of the hung one",
    )
    assert row.lost == 0
