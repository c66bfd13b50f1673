"""Records the sidecar did not write, and payload sizes (issue 5, scenarios 7, 8, 9). Poison
records and odd headers come from a foreign producer (plain aiokafka) straight to the topic."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from ..integration.processes import (
    Proc,
    assignment,
    consumed,
    poll,
    produce,
    received,
    start_app,
    start_sidecar,
    write_component,
)
from .conftest import CountSheet
from .kit import (
    attempts,
    cloudevent,
    delivered_event,
    publish_raw,
    start_subscriber,
)

NOT_JSON = b"{not json at all \xff"
ARRAY = b'[{"id": "in-an-array"}]'


def _poison_records(unique: str) -> tuple[list[dict], list[str]]:
    """Poison and odd records, then well-formed followers, all on partition 0."""
    wrong_spec = json.dumps(
        {"specversion": 1.0, "id": f"{unique}-wrongspec", "source": "s", "type": "t", "data": 1}
    ).encode()
    plain = json.dumps({"id": f"{unique}-plain", "order": 7}).encode()
    followers = [f"{unique}-after-{n}" for n in range(5)]
    records = [{"value": v, "partition": 0} for v in (NOT_JSON, ARRAY, wrong_spec, plain)]
    records += [{"value": cloudevent(f), "partition": 0} for f in followers]
    return records, [f"{unique}-wrongspec", f"{unique}-plain", *followers]


def test_poison_goes_to_the_dead_letter_topic(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """7. With a deadLetterTopic: a value that is not JSON and a JSON array go there unchanged;
    a CloudEvent with a wrong-typed specversion and a plain JSON object are JSON objects and are
    delivered as they are (Dapr reads any JSON object); the partition keeps flowing."""
    topic, dlt = f"poison-{unique}", f"poison-dlt-{unique}"
    (resources / "subscription.yaml").write_text(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: poison}\n"
        f"spec: {{pubsubname: pubsub, topic: {topic}, routes: {{default: /events}}, "
        f"deadLetterTopic: {dlt}}}\n"
    )
    app, sidecar = start_subscriber(
        tmp_path, procs, app_id=f"poison-{unique}", resources=resources, topics=[]
    )
    records, good = _poison_records(unique)
    produce(kafka_bootstrap, topic, records)
    poll(
        "the good records to be delivered", lambda: set(received(app)["finished"]) >= set(good), 60
    )
    dead = [r.value for r in consumed(kafka_bootstrap, dlt, 2)]
    assert sorted(dead) == sorted([NOT_JSON, ARRAY]), "the poison records, unchanged"
    plain = delivered_event(app, f"{unique}-plain")
    assert plain is not None and plain["body"].encode() == records[3]["value"], "as is"
    assert sidecar.alive()
    row = counts.tally(
        published=len(records),
        acked=good,
        finished=received(app)["finished"],
        note="2 poison to the DLT",
    )
    assert row.lost == 0


def test_poison_without_dead_letter_topic_is_retried_then_given_up(
    tmp_path: Path, kafka_bootstrap: str, procs: list[Proc], unique: str, counts: CountSheet
) -> None:
    """7. Without a deadLetterTopic a poison record is retried with backoff and logged with
    topic, partition and offset; with a bounded backOffMaxRetries it is then given up, so the
    partition does not stall forever (with the default -1 it is retried for ever, as in Dapr)."""
    topic = f"poison-nodlt-{unique}"
    resources = write_component(tmp_path / "res", kafka_bootstrap, backOffMaxRetries="3")
    app, sidecar = start_subscriber(
        tmp_path, procs, app_id=f"poison2-{unique}", resources=resources, topics=[topic]
    )
    records, good = _poison_records(unique)
    produce(kafka_bootstrap, topic, records)
    poll(
        "the good records to be delivered", lambda: set(received(app)["finished"]) >= set(good), 60
    )
    log = sidecar.log()
    retries = [
        line
        for line in log.splitlines()
        if "error deserializing cloud event" in line
        and "retrying" in line
        and f"topic={topic}" in line
        and "partition=0" in line
        and "offset=0" in line
    ]
    assert len(retries) == 3, log
    assert "giving up" in log and sidecar.alive()
    row = counts.tally(
        published=len(records),
        acked=good,
        finished=received(app)["finished"],
        note="2 poison retried 3x, given up",
    )
    assert row.lost == 0


def test_odd_headers_are_escaped_and_delivered(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """8. Kafka headers with control bytes and values that are not UTF-8: the record is
    delivered with those headers percent-escaped, and the partition is not stalled."""
    topic = f"headers-{unique}"
    app, _sidecar = start_subscriber(
        tmp_path, procs, app_id=f"headers-{unique}", resources=resources, topics=[topic]
    )
    odd = f"{unique}-odd"
    after = [f"{unique}-after-{n}" for n in range(3)]
    headers = [
        ("x-ctl", b"a\x01b\r\nInjected: yes"),
        ("x-bin", b"\xff\xfe\x00\x80"),
        ("x-nul", b"\x00"),
        ("x-ok", b"plain value"),
        ("bad name\n", b"v"),
    ]
    produce(
        kafka_bootstrap,
        topic,
        [{"value": cloudevent(odd), "partition": 0, "headers": headers}]
        + [{"value": cloudevent(a), "partition": 0} for a in after],
    )
    poll(
        "the record and its followers", lambda: set(received(app)["finished"]) >= {odd, *after}, 60
    )
    got = delivered_event(app, odd)
    assert got is not None
    h = {k.lower(): v for k, v in got["headers"].items()}
    assert h["x-ctl"] == "a%01b%0D%0AInjected%3A%20yes"
    assert h["x-bin"] == "%FF%FE%00%80"
    assert h["x-nul"] == "%00"
    assert h["x-ok"] == "plain value"
    assert "injected" not in h and "bad%20name%0a" in h
    row = counts.tally(published=4, acked=[odd, *after], finished=received(app)["finished"])
    assert row.lost == 0


def test_payload_sizes_round_trip_byte_exact(
    tmp_path: Path, kafka_bootstrap: str, procs: list[Proc], unique: str, counts: CountSheet
) -> None:
    """9. Binary payloads of 1 B, 1 MiB and the configured maximum (--max-body-size) travel
    through data_base64 byte-exact; one byte over the maximum gets 413 at publish."""
    topic = f"sizes-{unique}"
    max_body = 3 * 1024 * 1024
    resources = write_component(tmp_path / "res", kafka_bootstrap)
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    sub = start_sidecar(
        tmp_path, "sub", app_id=f"sizes-{unique}", resources=resources, app_port=app.port
    )
    pub = start_sidecar(
        tmp_path,
        "pub",
        app_id=f"sizes-pub-{unique}",
        resources=resources,
        extra=["--max-body-size", str(max_body)],
    )
    procs += [sub, pub]
    poll("the member to be assigned", lambda: len(assignment(sub)) == 4, 60)
    payloads = {
        f"{unique}-1B": os.urandom(1),
        f"{unique}-1MiB": os.urandom(1024 * 1024),
        f"{unique}-max": os.urandom(max_body),
    }
    for event_id, data in payloads.items():
        status, body = publish_raw(
            pub,
            topic,
            data,
            content_type="application/octet-stream",
            query=f"?metadata.cloudevent.id={event_id}",
            timeout_s=60,
        )
        assert status == 204, (event_id, status, body)
    status, body = publish_raw(
        pub, topic, os.urandom(max_body + 1), content_type="application/octet-stream", timeout_s=60
    )
    assert status == 413 and body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE", (status, body)
    poll("every payload delivered", lambda: set(received(app)["finished"]) >= set(payloads), 60)
    for event_id, data in payloads.items():
        event = json.loads(delivered_event(app, event_id)["body"])
        assert base64.b64decode(event["data_base64"]) == data, event_id
    assert len(attempts(app)) == 3
    row = counts.tally(
        published=4,
        acked=payloads,
        finished=received(app)["finished"],
        note="1 over the max refused: 413",
    )
    assert row.lost == 0
