"""Leader election on a ``coordination.k8s.io/v1`` Lease, so of several replicas one writes.

Every replica watches and keeps its indexes warm (a hot standby) and serves the admission
webhook, which is pure; only the holder of the Lease writes config Secrets, status and Events
(``handlers.py`` gates its worker on :meth:`LeaderElector.wait_leader` and checks
:attr:`LeaderElector.is_leader` before each write). The protocol is client-go's
(``k8s.io/client-go/tools/leaderelection``):

- a candidate takes the Lease when it is free, or when the Lease record (holder, renewTime,
  resourceVersion) has not changed for ``lease_duration_s`` *by the candidate's own clock* since
  it first saw that record: clocks of two replicas are never compared;
- the holder renews every ``renew_interval_s``; every API call is bounded by
  ``call_timeout_s`` (``_request_timeout``, and ``asyncio.wait_for`` around the attempt), so a
  hung API server cannot hang the elector;
- the holder steps down (stops writing) when no renew succeeded within ``renew_deadline_s``
  (two thirds of ``lease_duration_s``, as client-go's 10 s of 15 s) measured with
  ``time.monotonic()`` from the *start* of its last successful renew. A standby cannot take over
  before ``lease_duration_s`` after it saw that renew, which is later than that start, so the
  two never write at once (as long as the clocks run at about the same rate);
- every write carries the ``resourceVersion`` read, so two candidates racing cannot both win.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from typing import Any

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Holds (or waits for) the Lease ``namespace/name`` as ``identity``.

    ``coordination`` is a ``kubernetes.client.CoordinationV1Api``; ``None`` means standalone:
    always the leader. Durations in seconds; ``renew_deadline_s`` defaults to two thirds of
    ``lease_duration_s`` and ``call_timeout_s`` (each Lease API call) to the smaller of
    ``renew_interval_s`` and a quarter of ``renew_deadline_s``.
    """

    def __init__(
        self,
        coordination: Any | None,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_interval_s: float = 5.0,
        renew_deadline_s: float | None = None,
        call_timeout_s: float | None = None,
    ) -> None:
        self._api = coordination
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_interval_s = renew_interval_s
        self.renew_deadline_s = (
            renew_deadline_s if renew_deadline_s is not None else lease_duration_s * 2 / 3
        )
        if not 0 < self.renew_deadline_s < lease_duration_s:
            raise ValueError("renew_deadline_s must be positive and below lease_duration_s")
        self.call_timeout_s = (
            call_timeout_s
            if call_timeout_s is not None
            else min(renew_interval_s, self.renew_deadline_s / 4)
        )
        self._leader = asyncio.Event()
        # time.monotonic() until which this replica may write: start of the last successful
        # renew + renew_deadline_s. Read from worker threads too (a float: atomic enough).
        self._valid_until = float("inf") if coordination is None else 0.0
        # The Lease record as last seen and when (monotonic) it was first seen so: a record
        # unchanged for lease_duration_s is expired, whatever its renewTime says.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        if coordination is None:
            self._leader.set()

    @property
    def is_leader(self) -> bool:
        """Whether this replica may write now: it holds the Lease and renewed it in time."""
        return self._leader.is_set() and time.monotonic() < self._valid_until

    async def wait_leader(self) -> None:
        """Return once this replica holds the Lease."""
        while not self.is_leader:
            await self._leader.wait()
            if not self.is_leader:  # set, but the deadline passed: the elector clears it soon
                await asyncio.sleep(min(self.call_timeout_s, 0.1))  # poll until it does

    def _step_down(self, why: str) -> None:
        if self._leader.is_set():
            log.warning(
                "leader election: leadership lost (%s); not writing",
                why,
                extra={"lease": self.name, "identity": self.identity},
            )
        self._leader.clear()
        self._valid_until = 0.0

    async def run(self) -> None:
        """Acquire and renew until cancelled; on cancel, release the Lease if held."""
        if self._api is None:
            return
        try:
            while True:
                started = time.monotonic()
                # A leader's attempt may not outlive its deadline; a candidate's is bounded by
                # its two calls (read, then create or replace).
                bound = (
                    self._valid_until - started
                    if self._leader.is_set()
                    else 2 * self.call_timeout_s
                )
                try:
                    held = await asyncio.wait_for(
                        asyncio.to_thread(self._try_acquire_or_renew), max(bound, 0.001)
                    )
                except TimeoutError:
                    held = None
                    log.warning(
                        "leader election: lease %s/%s: no answer within %.1f s",
                        self.namespace,
                        self.name,
                        bound,
                        extra={"lease": self.name, "identity": self.identity},
                    )
                except Exception as exc:  # API errors: keep the belief until the deadline
                    held = None
                    log.warning(
                        "leader election: lease %s/%s not reachable: %s",
                        self.namespace,
                        self.name,
                        exc,
                        extra={"lease": self.name, "identity": self.identity},
                    )
                if held:
                    self._valid_until = started + self.renew_deadline_s
                    if not self._leader.is_set():
                        log.info(
                            "leader election: now the leader",
                            extra={"lease": self.name, "identity": self.identity},
                        )
                        self._leader.set()
                elif held is False:
                    self._step_down("another replica holds the Lease")
                elif time.monotonic() >= self._valid_until:
                    self._step_down(f"not renewed within {self.renew_deadline_s:.1f} s")
                await asyncio.sleep(self._next_attempt_in())  # renew period, not an event wait
        finally:
            if self._leader.is_set():
                self._leader.clear()
                self._valid_until = 0.0
                try:
                    await asyncio.shield(
                        asyncio.wait_for(asyncio.to_thread(self._release), 2 * self.call_timeout_s)
                    )
                except Exception:
                    log.debug("leader election: release failed", exc_info=True)

    def _next_attempt_in(self) -> float:
        if not self._leader.is_set():
            return self.renew_interval_s
        # Retry a failed renew before the deadline, not a whole renew interval later.
        left = self._valid_until - time.monotonic()
        return max(0.0, min(self.renew_interval_s, left / 2))

    def _body(
        self,
        resource_version: str | None,
        *,
        transitions: int,
        acquire_time: str | None,
        current: Any = None,
    ) -> dict[str, Any]:
        now = _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        if current is not None:
            # The chart creates the Lease (so `helm uninstall` removes it): keep its labels and
            # Helm's ownership annotations through our replaces.
            for key in ("labels", "annotations"):
                if value := getattr(current.metadata, key, None):
                    meta[key] = value
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": math.ceil(self.lease_duration_s),
                "acquireTime": acquire_time or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def _try_acquire_or_renew(self) -> bool:
        from kubernetes.client import ApiException

        timeout = self.call_timeout_s
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self._api.create_namespaced_lease(
                    self.namespace,
                    self._body(None, transitions=0, acquire_time=None),
                    _request_timeout=timeout,
                )
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.lease_duration_s
        record = (holder, str(spec.renew_time), str(lease.metadata.resource_version))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder and holder != self.identity and now - self._observed_at <= duration:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquire = (
            spec.acquire_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if holder == self.identity and spec.acquire_time
            else None
        )
        try:
            self._api.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._body(
                    lease.metadata.resource_version,
                    transitions=transitions,
                    acquire_time=acquire,
                    current=lease,
                ),
                _request_timeout=timeout,
            )
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        return True

    def _release(self) -> None:
        timeout = self.call_timeout_s
        lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        if lease.spec.holder_identity != self.identity:
            return
        body = self._body(
            lease.metadata.resource_version,
            transitions=lease.spec.lease_transitions or 0,
            acquire_time=None,
            current=lease,
        )
        body["spec"]["holderIdentity"] = ""
        self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _request_timeout=timeout
        )
