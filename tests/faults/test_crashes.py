"""Sidecars killed, stopped and restarted while they deliver (issue 5, scenarios 1, 2, 4, 10,
12). Real processes: ``python -m tidings.sidecar``, ``recorder_app.py``, the session's Tansu."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from ..integration.processes import (
    Proc,
    assignment,
    http_json,
    poll,
    received,
    start_app,
    start_sidecar,
    write_component,
)
from .conftest import CountSheet
from .kit import attempts, produce_events, record_count, set_mode


def _split(a: Proc, b: Proc, partitions: int = 4) -> bool:
    x, y = assignment(a), assignment(b)
    return bool(x) and bool(y) and not (x & y) and len(x | y) == partitions


def _finished(*apps: Proc) -> list[str]:
    return [i for app in apps for i in received(app)["finished"]]


def test_sigkill_one_of_two_replicas(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """1. SIGKILL one of two replicas while 2,000 messages flow: the survivor gets every message
    the killed one's app did not acknowledge, after the group rebalances."""
    topic, app_id = f"kill2-{unique}", f"kill2-{unique}"
    apps = [start_app(tmp_path, f"r{n}", topics=[topic], delay_s=0.002) for n in (1, 2)]
    procs += apps
    sidecars = [
        start_sidecar(tmp_path, f"r{n}", app_id=app_id, resources=resources, app_port=app.port)
        for n, app in zip((1, 2), apps)
    ]
    procs += sidecars
    poll("the two replicas to split the partitions", lambda: _split(*sidecars), 60)

    ids = [f"{unique}-{n:04d}" for n in range(2000)]
    produce_events(kafka_bootstrap, topic, ids)
    poll(
        "deliveries under way at both replicas",
        lambda: all(len(received(a)["finished"]) >= 150 for a in apps),
        60,
        0.01,
    )
    sidecars[0].signal(signal.SIGKILL)
    sidecars[0].process.wait(10)
    at_kill = len(set(_finished(*apps)))
    assert at_kill < len(ids), "the kill must land mid-stream"

    poll("the survivor to deliver the rest", lambda: set(_finished(*apps)) >= set(ids), 120, 0.2)
    row = counts.tally(
        published=len(ids),
        acked=ids,
        finished=_finished(*apps),
        note=f"SIGKILL after {at_kill} acks",
    )
    assert row.lost == 0


def test_sigterm_during_delivery(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """2. SIGTERM during delivery: in-flight deliveries finish and are committed (none delivered
    twice because of the shutdown); what arrives after shutdown began is neither acked nor
    dead-lettered, it stays for the next member."""
    topic, dlt, app_id = f"term-{unique}", f"term-dlt-{unique}", f"term-{unique}"
    (resources / "subscription.yaml").write_text(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: term}\n"
        f"spec: {{pubsubname: pubsub, topic: {topic}, routes: {{default: /events}}, "
        f"deadLetterTopic: {dlt}}}\n"
    )
    app = start_app(tmp_path, "app", topics=[], delay_s=0.5)
    procs.append(app)
    first = start_sidecar(
        tmp_path, "first", app_id=app_id, resources=resources, app_port=app.port, grace_s=8
    )
    procs.append(first)
    poll("the first member to be assigned", lambda: len(assignment(first)) == 4, 60)
    early = [f"{unique}-early-{n}" for n in range(16)]
    produce_events(kafka_bootstrap, topic, early)
    poll("four deliveries in flight", lambda: len(received(app)["started"]) >= 4, 60, 0.01)
    first.signal(signal.SIGTERM)
    late = [f"{unique}-late-{n}" for n in range(16)]
    produce_events(kafka_bootstrap, topic, late)  # arrives while the sidecar shuts down
    assert first.process.wait(30) == 0, first.log()
    at_exit = received(app)
    assert set(at_exit["started"]) <= set(at_exit["finished"]), (
        "every delivery in flight at SIGTERM finished before the sidecar exited"
    )
    assert not set(late) & set(at_exit["started"]), "nothing new started once shutdown began"
    done_before = set(at_exit["finished"])

    second = start_sidecar(
        tmp_path, "second", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)
    everything = early + late
    poll("the rest to be delivered", lambda: set(received(app)["finished"]) >= set(everything), 90)
    redelivered = set(received(app)["started"][len(at_exit["started"]) :]) & done_before
    assert not redelivered, f"finished before SIGTERM but delivered again: {sorted(redelivered)}"
    assert record_count(kafka_bootstrap, dlt) == 0, "nothing was dead-lettered"
    row = counts.tally(
        published=len(everything),
        acked=everything,
        finished=received(app)["finished"],
        note=f"{len(done_before)} done before exit",
    )
    assert row.lost == 0 and row.duplicated == 0


def test_restart_during_retry_loop(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """4. The sidecar restarts while a message is in its retry loop: after the restart the same
    message is delivered again, and what follows it in the partition waits for it."""
    topic, app_id = f"retry-restart-{unique}", f"retry-restart-{unique}"
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    stuck = f"{unique}-stuck"
    followers = [f"{unique}-after-{n}" for n in range(5)]
    set_mode(app, retry=[stuck])
    first = start_sidecar(
        tmp_path, "first", app_id=app_id, resources=resources, app_port=app.port, grace_s=2
    )
    procs.append(first)
    poll("the member to be assigned", lambda: assignment(first), 60)
    produce_events(kafka_bootstrap, topic, [stuck, *followers], partition=0)
    poll("the message to be retried", lambda: sum(a["id"] == stuck for a in attempts(app)) >= 3, 60)
    first.signal(signal.SIGTERM)
    assert first.process.wait(30) == 0, first.log()
    before = sum(a["id"] == stuck for a in attempts(app))
    assert not set(followers) & set(received(app)["started"]), "followers wait for it"

    second = start_sidecar(
        tmp_path, "second", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)
    poll(
        "the same message to be delivered again after the restart",
        lambda: sum(a["id"] == stuck for a in attempts(app)) > before,
        60,
    )
    set_mode(app)  # the app recovers
    poll(
        "it and its followers to be delivered",
        lambda: set(received(app)["finished"]) >= {stuck, *followers},
        60,
    )
    finished = received(app)["finished"]
    assert finished.index(stuck) < min(finished.index(f) for f in followers)
    row = counts.tally(
        published=6,
        acked=[stuck, *followers],
        finished=finished,
        note=f"{before} attempts before the restart",
    )
    assert row.lost == 0


def test_partition_key_order_across_a_crash(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str, counts: CountSheet
) -> None:
    """10. 1,000 messages with one partitionKey arrive in publish order; a replica crash in the
    middle keeps the order of what is delivered after the rebalance (duplicates allowed)."""
    topic, app_id = f"keyed-{unique}", f"keyed-{unique}"
    apps = [start_app(tmp_path, f"r{n}", topics=[topic], delay_s=0.003) for n in (1, 2)]
    procs += apps
    sidecars = [
        start_sidecar(tmp_path, f"r{n}", app_id=app_id, resources=resources, app_port=app.port)
        for n, app in zip((1, 2), apps)
    ]
    publisher = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=resources)
    procs += [*sidecars, publisher]
    poll("the two replicas to split the partitions", lambda: _split(*sidecars), 60)

    ids = [f"{unique}-{n:04d}" for n in range(1000)]
    url = (
        f"http://127.0.0.1:{publisher.port}/v1.0/publish/pubsub/{topic}"
        "?metadata.partitionKey=the-one-key&metadata.cloudevent.id="
    )
    acked: list[str] = []

    def publish_range(numbers: range) -> None:
        for n in numbers:
            status, body = http_json(
                url + ids[n],
                method="POST",
                body=json.dumps({"n": n}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert status == 204, body
            acked.append(ids[n])

    publish_range(range(500))
    poll(
        "the owner to be well into the stream",
        lambda: max(len(received(a)["finished"]) for a in apps) >= 150,
        60,
        0.02,
    )
    got = [len(received(a)["finished"]) for a in apps]
    killed = sidecars[got.index(max(got))]
    killed.signal(signal.SIGKILL)
    killed.process.wait(10)
    publish_range(range(500, len(ids)))  # the rest while the group rebalances
    owner_app, survivor_app = apps[sidecars.index(killed)], apps[1 - sidecars.index(killed)]

    poll("every message to be delivered", lambda: set(_finished(*apps)) >= set(ids), 120, 0.2)
    owner_seq = [ids.index(i) for i in received(owner_app)["finished"]]
    survivor_seq = [ids.index(i) for i in received(survivor_app)["finished"]]
    assert owner_seq == list(range(len(owner_seq))), "the first owner delivered in order"
    assert survivor_seq == list(range(survivor_seq[0], len(ids))), (
        "after the rebalance the survivor delivers in order, from a committed offset"
    )
    assert survivor_seq[0] <= len(owner_seq), "no gap between the two"
    row = counts.tally(
        published=len(ids),
        acked=acked,
        finished=_finished(*apps),
        note=f"crash after {len(owner_seq)} in order",
    )
    assert row.lost == 0


def test_restart_every_sidecar_resumes_from_commits(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """12. Restarting every sidecar of an app-id resumes from the committed offsets, not from
    ``initialOffset`` (newest here: messages published while all were down still arrive); a
    brand-new app-id follows ``initialOffset`` (newest: none of the old ones; oldest: all)."""
    topic, app_id = f"resume-{unique}", f"resume-{unique}"
    resources = write_component(tmp_path / "newest", kafka_bootstrap, initialOffset="newest")
    apps = [start_app(tmp_path, f"r{n}", topics=[topic]) for n in (1, 2)]
    procs += apps

    def run_sidecars(tag: str) -> list[Proc]:
        started = [
            start_sidecar(
                tmp_path, f"{tag}{n}", app_id=app_id, resources=resources, app_port=app.port
            )
            for n, app in zip((1, 2), apps)
        ]
        procs.extend(started)
        poll("the two replicas to split the partitions", lambda: _split(*started), 60)
        return started

    first = run_sidecars("a")
    before = [f"{unique}-before-{n}" for n in range(100)]
    produce_events(kafka_bootstrap, topic, before)
    poll("the first 100", lambda: set(_finished(*apps)) >= set(before), 60)
    for sidecar in first:
        sidecar.signal(signal.SIGTERM)
    for sidecar in first:
        assert sidecar.process.wait(30) == 0, sidecar.log()
    while_down = [f"{unique}-down-{n}" for n in range(50)]
    produce_events(kafka_bootstrap, topic, while_down)

    run_sidecars("b")
    poll(
        "what was published while every sidecar was down",
        lambda: set(_finished(*apps)) >= set(while_down),
        60,
    )
    all_ids = before + while_down
    row = counts.tally(
        published=len(all_ids),
        acked=all_ids,
        finished=_finished(*apps),
        note="restart: resumed from commits",
    )
    assert row.lost == 0 and row.duplicated == 0, "a graceful restart redelivers nothing"

    # A brand-new app-id: newest skips the old messages, oldest reads them all. Tansu (0.1.2's
    # build) answers ListOffsets "latest" with the start of a partition's last batch + 1 rather
    # than its end, so a last batch of several records would be partly read by "newest"; a
    # one-record batch per partition makes the end offset what Kafka would say.
    fences = [f"{unique}-fence-{p}" for p in range(4)]
    for p, fence in enumerate(fences):
        produce_events(kafka_bootstrap, topic, [fence], partition=p)
    poll("the fences at the restarted app-id", lambda: set(_finished(*apps)) >= set(fences), 60)
    all_ids += fences
    oldest = write_component(tmp_path / "oldest", kafka_bootstrap, initialOffset="oldest")
    fresh_new = start_app(tmp_path, "fresh-newest", topics=[topic])
    fresh_old = start_app(tmp_path, "fresh-oldest", topics=[topic])
    procs += [fresh_new, fresh_old]
    new_sidecar = start_sidecar(
        tmp_path,
        "fresh-newest",
        app_id=f"newest-{unique}",
        resources=resources,
        app_port=fresh_new.port,
    )
    old_sidecar = start_sidecar(
        tmp_path,
        "fresh-oldest",
        app_id=f"oldest-{unique}",
        resources=oldest,
        app_port=fresh_old.port,
    )
    procs += [new_sidecar, old_sidecar]
    poll(
        "the new app-ids to be assigned",
        lambda: len(assignment(new_sidecar)) == 4 and len(assignment(old_sidecar)) == 4,
        60,
    )
    marker = f"{unique}-marker"
    produce_events(kafka_bootstrap, topic, [marker])
    poll("the marker at the newest app-id", lambda: marker in received(fresh_new)["finished"], 60)
    poll(
        "everything at the oldest app-id",
        lambda: set(received(fresh_old)["finished"]) >= {*all_ids, marker},
        60,
    )
    assert received(fresh_new)["finished"] == [marker], "newest: nothing from before it joined"
