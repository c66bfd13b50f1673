"""Leader election on a ``coordination.k8s.io/v1`` Lease, so of several replicas one writes.

Every replica watches and keeps its indexes warm (a hot standby) and serves the admission
webhook, which is pure; only the holder of the Lease writes config Secrets, status and Events
(``handlers.py`` gates its worker on :meth:`LeaderElector.wait_leader`). The protocol is
client-go's: take the Lease when it is free or its holder has not renewed within
``lease_duration_s``; renew every ``renew_interval_s``; every write carries the
``resourceVersion`` read, so two candidates racing for it cannot both win.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Holds (or waits for) the Lease ``namespace/name`` as ``identity``.

    ``coordination`` is a ``kubernetes.client.CoordinationV1Api``; ``None`` means standalone:
    always the leader. Durations in seconds.
    """

    def __init__(self, coordination: Any | None, *, namespace: str, name: str, identity: str,
                 lease_duration_s: float = 15.0, renew_interval_s: float = 5.0) -> None:
        self._api = coordination
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_interval_s = renew_interval_s
        self._leader = asyncio.Event()
        if coordination is None:
            self._leader.set()

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        """Return once this replica holds the Lease."""
        await self._leader.wait()

    async def run(self) -> None:
        """Acquire and renew until cancelled; on cancel, release the Lease if held."""
        if self._api is None:
            return
        try:
            while True:
                try:
                    held = await asyncio.to_thread(self._try_acquire_or_renew)
                except Exception:  # API errors: keep the current belief until the lease lapses
                    log.exception("leader election: lease %s/%s not reachable",
                                  self.namespace, self.name)
                    held = self.is_leader
                if held and not self.is_leader:
                    log.info("leader election: now the leader", extra={"lease": self.name,
                                                                        "identity": self.identity})
                    self._leader.set()
                elif not held and self.is_leader:
                    log.warning("leader election: leadership lost", extra={"lease": self.name})
                    self._leader.clear()
                await asyncio.sleep(self.renew_interval_s)  # renew period, not an event wait
        finally:
            if self.is_leader:
                self._leader.clear()
                try:
                    await asyncio.shield(asyncio.to_thread(self._release))
                except Exception:
                    log.debug("leader election: release failed", exc_info=True)

    def _body(self, resource_version: str | None, *, transitions: int,
              acquire_time: str | None) -> dict[str, Any]:
        now = _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": int(self.lease_duration_s),
                         "acquireTime": acquire_time or now, "renewTime": now,
                         "leaseTransitions": transitions}}

    def _try_acquire_or_renew(self) -> bool:
        from kubernetes.client import ApiException

        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self._api.create_namespaced_lease(
                    self.namespace, self._body(None, transitions=0, acquire_time=None))
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity or ""
        renew = spec.renew_time
        duration = spec.lease_duration_seconds or int(self.lease_duration_s)
        expired = renew is None or (_now() - renew).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquire = (spec.acquire_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                   if holder == self.identity and spec.acquire_time else None)
        try:
            self._api.replace_namespaced_lease(
                self.name, self.namespace,
                self._body(lease.metadata.resource_version, transitions=transitions,
                           acquire_time=acquire))
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        return True

    def _release(self) -> None:
        lease = self._api.read_namespaced_lease(self.name, self.namespace)
        if lease.spec.holder_identity != self.identity:
            return
        body = self._body(lease.metadata.resource_version,
                          transitions=lease.spec.lease_transitions or 0, acquire_time=None)
        body["spec"]["holderIdentity"] = ""
        self._api.replace_namespaced_lease(self.name, self.namespace, body)
