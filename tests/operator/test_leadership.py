"""Leader election (operator/leadership.py) when the API server stops answering.

Found on a real kube-apiserver 1.20 (SIGSTOPped for 40 s): the leader's renew call hung without a
timeout, so it never stepped down while a second replica took the Lease. Hanging a real API
server here would stall every other cluster test, so the Lease API is a FAKE: an in-memory
``CoordinationV1Api`` with resourceVersion checks whose calls can be made to hang (honouring
``_request_timeout`` like the real client, or not at all).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tidings.operator.handlers import NotLeader, Reconciler
from tidings.operator.leadership import LeaderElector

pytestmark = pytest.mark.timeout(30)


class LeaseStore:
    """One Lease, shared by the fake clients of several replicas."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.body: dict[str, Any] | None = None
        self.version = 0


class FakeCoordination:
    """A fake ``CoordinationV1Api`` for one replica. ``hang`` makes every call block: for its
    ``_request_timeout`` (then it raises, as urllib3 does) or, with ``ignore_timeout``, until
    ``release`` is set."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.hang = threading.Event()
        self.release = threading.Event()
        self.ignore_timeout = False
        self.timeouts: list[float | None] = []
        self.last_renew_started: float | None = None

    def _call(self, timeout: float | None) -> None:
        self.timeouts.append(timeout)
        if self.hang.is_set():
            if self.release.wait(None if self.ignore_timeout else timeout):
                raise ConnectionError("released")
            raise TimeoutError("read timed out")

    def _lease(self) -> Any:
        from kubernetes.client import ApiException

        if self.store.body is None:
            raise ApiException(status=404)
        spec = self.store.body["spec"]
        parse = datetime.datetime.fromisoformat
        return SimpleNamespace(
            metadata=SimpleNamespace(resource_version=str(self.store.version)),
            spec=SimpleNamespace(
                holder_identity=spec["holderIdentity"],
                renew_time=parse(spec["renewTime"]),
                acquire_time=parse(spec["acquireTime"]),
                lease_duration_seconds=spec["leaseDurationSeconds"],
                lease_transitions=spec["leaseTransitions"],
            ),
        )

    def read_namespaced_lease(
        self, name: str, namespace: str, *, _request_timeout: float | None = None
    ) -> Any:
        started = time.monotonic()
        self._call(_request_timeout)
        with self.store.lock:
            self._read_at = started
            return self._lease()

    def create_namespaced_lease(
        self, namespace: str, body: dict[str, Any], *, _request_timeout: float | None = None
    ) -> None:
        from kubernetes.client import ApiException

        self._call(_request_timeout)
        with self.store.lock:
            if self.store.body is not None:
                raise ApiException(status=409)
            self.store.body, self.store.version = body, self.store.version + 1
            self.last_renew_started = self._read_at

    def replace_namespaced_lease(
        self,
        name: str,
        namespace: str,
        body: dict[str, Any],
        *,
        _request_timeout: float | None = None,
    ) -> None:
        from kubernetes.client import ApiException

        self._call(_request_timeout)
        with self.store.lock:
            if body["metadata"].get("resourceVersion") != str(self.store.version):
                raise ApiException(status=409)
            self.store.body, self.store.version = body, self.store.version + 1
            self.last_renew_started = self._read_at


async def until(what: str, check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # poll interval, not a stand-in for an event


def elector(api: FakeCoordination, identity: str, **kw: Any) -> LeaderElector:
    return LeaderElector(
        api,
        namespace="ns",
        name="lease",
        identity=identity,
        lease_duration_s=kw.pop("lease_duration_s", 1.5),
        renew_interval_s=kw.pop("renew_interval_s", 0.1),
        **kw,
    )


@pytest.mark.parametrize(
    "ignore_timeout", [False, True], ids=["client-timeout", "call-never-returns"]
)
async def test_leader_steps_down_within_the_lease_when_the_api_server_hangs(
    ignore_timeout: bool,
) -> None:
    api = FakeCoordination(LeaseStore())
    api.ignore_timeout = ignore_timeout
    le = elector(api, "a")
    task = asyncio.create_task(le.run())
    try:
        await asyncio.wait_for(le.wait_leader(), 5)
        api.hang.set()  # the API server stops answering (SIGSTOP)
        # is_leader (checked before each write) turns false at the deadline; the elector then
        # clears its flag, so wait_leader blocks again
        await until("step-down", lambda: not le.is_leader and not le._leader.is_set(), timeout_s=5)
        assert api.last_renew_started is not None
        stepped_down_after = time.monotonic() - api.last_renew_started
        assert stepped_down_after < le.lease_duration_s, stepped_down_after
        assert all(t is not None and t <= le.call_timeout_s for t in api.timeouts)
    finally:
        api.release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hung_leader_stops_before_the_standby_takes_over() -> None:
    store = LeaseStore()
    hung, healthy = FakeCoordination(store), FakeCoordination(store)
    a = elector(hung, "a")
    tasks = [asyncio.create_task(a.run())]
    try:
        await asyncio.wait_for(a.wait_leader(), 5)
        b = elector(healthy, "b")
        tasks.append(asyncio.create_task(b.run()))
        await until("b watching the Lease", lambda: len(healthy.timeouts) >= 2)
        hung.hang.set()
        a_stopped_at = None
        deadline = time.monotonic() + 10
        while not b.is_leader:  # sample both every 5 ms: never two leaders
            assert time.monotonic() < deadline, "the standby never took over"
            if a_stopped_at is None and not a.is_leader:
                a_stopped_at = time.monotonic()
            assert not (a.is_leader and b.is_leader)
            await asyncio.sleep(0.005)  # sampling interval
        assert a_stopped_at is not None and not a.is_leader
        assert store.body is not None and store.body["spec"]["holderIdentity"] == "b"
        # the standby waited a full lease duration from the last renew it saw
        assert time.monotonic() - hung.last_renew_started >= b.lease_duration_s
    finally:
        hung.release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_expiry_is_measured_by_the_candidates_clock_not_renew_time() -> None:
    """A holder whose clock is an hour behind still holds the Lease while it renews."""
    store = LeaseStore()
    api = FakeCoordination(store)
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat()
    store.body = {
        "metadata": {},
        "spec": {
            "holderIdentity": "other",
            "renewTime": old,
            "acquireTime": old,
            "leaseDurationSeconds": 1,
            "leaseTransitions": 0,
        },
    }
    store.version = 1
    le = elector(api, "me", lease_duration_s=1.0)
    assert le._try_acquire_or_renew() is False  # first sight of this record
    store.version += 1  # the holder renewed (with its skewed clock)
    assert le._try_acquire_or_renew() is False
    seen = time.monotonic()
    while time.monotonic() - seen <= 1.0:  # the record unchanged for a lease duration...
        assert le._try_acquire_or_renew() is False
        time.sleep(0.05)  # poll interval
    assert le._try_acquire_or_renew() is True  # ...is expired
    assert store.body["spec"]["holderIdentity"] == "me"


def test_the_worker_checks_leadership_before_each_write() -> None:
    le = elector(FakeCoordination(LeaseStore()), "a")
    rec = Reconciler(core=None, custom=None, leader=le)
    with pytest.raises(NotLeader):
        rec.check_leader()
    le._leader.set()
    le._valid_until = time.monotonic() + 10
    rec.check_leader()
    le._valid_until = time.monotonic() - 0.001  # deadline passed, elector not yet run
    assert not le.is_leader
    with pytest.raises(NotLeader):
        rec.check_leader()
