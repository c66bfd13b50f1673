"""Bad input on the publish API (issue 5): Hypothesis throws random pubsub names, topics,
metadata, content types and bodies at a real sidecar process (Kafka component, the session's
Tansu). Every answer must be a documented status with a Dapr JSON error body, a client mistake
is never a 500, and the sidecar never dies."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..integration.processes import Proc, http_json, start_sidecar

KNOWN_METADATA = [
    "rawPayload",
    "partitionKey",
    "partitionNumber",
    "ttlInSeconds",
    "cloudevent.id",
    "cloudevent.type",
    "cloudevent.source",
    "cloudevent.specversion",
    "cloudevent.datacontenttype",
    "traceparent",
    "contentType",
    "key",
    "content-type",
]
CONTENT_TYPES = [
    "application/json",
    "application/cloudevents+json",
    "text/plain",
    "application/octet-stream",
    "application/xml",
    "",
    "application/json; x=1",
    "application/cloudevents-batch+json",
]
# 413 only for a body over --max-body-size (below); 400 text/plain only for a bad % escape.
DOCUMENTED = {204, 400, 403, 404, 413, 500}
MAX_BODY = 64 * 1024

latin1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
cloudevents = st.fixed_dictionaries(
    {
        "specversion": st.sampled_from(["1.0", "0.3", 1.0, None]),
        "id": st.text(max_size=8) | st.integers(),
        "source": st.text(max_size=8),
        "type": st.text(max_size=8),
    },
    optional={
        "data": json_values,
        "data_base64": st.text(max_size=12),
        "datacontenttype": st.sampled_from(CONTENT_TYPES),
        "expiration": st.text(max_size=10),
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    cloudevents.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{", b"[]", b'"str"', b"null", b"\xff\xfe", b"{}" * 3]),
    st.just(b"x" * (MAX_BODY + 1)),
)
metadata = st.dictionaries(
    st.sampled_from(KNOWN_METADATA) | st.text(max_size=12),
    st.text(max_size=16) | st.integers(-5, 10**12).map(str),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn, topic: str) -> tuple[str, str, str, bytes, str]:
    method = draw(st.sampled_from(["POST", "PUT"]))
    bulk = draw(st.booleans()) and draw(st.booleans())
    prefix = "/v1.0-alpha1/publish/bulk/" if bulk else "/v1.0/publish/"
    # Hypothesis leans towards the first element of sampled_from: the common case goes first.
    pubsub = draw(st.sampled_from(["pubsub"] * 6 + ["nope", "", "random"]))
    if pubsub == "random":
        pubsub = draw(st.text(max_size=10))
    topic_name = draw(st.sampled_from([topic] * 4 + [f"{topic}/a.b", f"{topic}-x", "", "random"]))
    if topic_name == "random":
        topic_name = draw(st.text(max_size=30))
    if draw(st.sampled_from([False] * 9 + [True])):  # raw path text (bad % escapes and all)
        path = prefix + draw(
            st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
                max_size=30,
            )
        )
    else:
        path = prefix + quote(pubsub, safe="") + "/" + quote(topic_name, safe="/")
    query = urlencode({f"metadata.{k}": v for k, v in draw(metadata).items()})
    body = draw(bodies)
    if bulk and draw(st.booleans()):
        entries = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "entryId": st.text(max_size=5),
                        "event": json_values,
                        "contentType": st.sampled_from(CONTENT_TYPES),
                    },
                    optional={
                        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8))
                    },
                ),
                max_size=3,
            )
        )
        body = json.dumps(entries).encode()
    content_type = draw(st.sampled_from(CONTENT_TYPES) | latin1)
    return method, path + ("?" + query if query else ""), content_type, body, path


def test_publish_api_survives_random_requests(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    sidecar = start_sidecar(
        tmp_path,
        "fuzz",
        app_id=f"fuzz-{unique}",
        resources=resources,
        extra=["--max-body-size", str(MAX_BODY)],
    )
    procs.append(sidecar)
    topic = f"fuzz-{unique}"
    seen: Counter[int] = Counter()

    @settings(
        max_examples=600,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(topic))
    def one(request: tuple[str, str, str, bytes, str]) -> None:
        method, target, content_type, body, path = request
        conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=60)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.putheader("Content-Type", content_type.encode("latin-1"))
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            status, raw = response.status, response.read()
            answer_type = response.getheader("Content-Type", "")
        finally:
            conn.close()
        seen[status] += 1
        assert status in DOCUMENTED, (status, raw)
        if status == 204:
            return
        if status == 400 and answer_type.startswith("text/plain"):
            assert b"failed to unescape request parameter" in raw and "%" in path, raw
            return
        answer = json.loads(raw)
        assert isinstance(answer, dict) and answer.get("errorCode"), raw
        if status == 413:
            assert len(body) > MAX_BODY, raw
        # The broker is up: a 500 could only be for the client's mistake (or a bug).
        assert status != 500, raw
        assert sidecar.alive(), sidecar.log()

    one()
    assert {204, 400, 404, 413} <= set(seen), f"the requests reach every kind of answer: {seen}"
    assert sidecar.alive(), sidecar.log()
    assert http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz/outbound")[0] == 204
    print(f"\n[publish fuzz] {sum(seen.values())} requests, answers {dict(sorted(seen.items()))}")
