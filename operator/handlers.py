"""kopf handlers and indexes, and the one worker that writes what they decide.

Watch side (kopf, every replica): three indexes hold the cluster's view: injected pods by
``(namespace, app-id)``, Components and Subscriptions by namespace. kopf fills all indexes before
any handler runs, so the worker never garbage-collects a Secret on a half-listed cluster. The
``on.event`` handlers only decide *what* is stale and mark it:

- a Component/Subscription changed → validate it and every Subscription of its namespace
  (``PubsubNotFound`` and ``Conflict`` depend on the others), re-render every app there;
- a Secret changed that a Component references → re-validate those, re-render the namespace;
- one of our config Secrets changed or vanished → re-render that app (restores it);
- an injected pod appeared or went → re-render (or garbage-collect) its app.

Write side (:class:`Reconciler`, leader only, see ``leadership.py``): one worker takes marked
keys in order, coalescing bursts (ten Subscriptions applied at once render each app once),
writes through ``appconfig.py`` (Secrets) and status/Events here, and retries a failed key with
backoff. A periodic resync re-marks everything as a safety net. A bad resource never raises out
of a handler: it becomes a ``Ready=False`` condition and a Warning Event.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .appconfig import (
    APP_ID_LABEL,
    AppConfigConflict,
    apply_app_secret,
    config_too_large,
    delete_app_secret,
    in_scope,
    is_ours,
    render_app_config,
    secret_manifest,
    secret_refs,
)
from .leadership import LeaderElector
from .metrics import CONFIG_SECRETS, RECONCILE_ERRORS
from .sidecar_patch import INJECTED_LABEL
from .validation import Verdict, ready_condition, validate_component, validate_subscription

__all__ = ["Key", "NotLeader", "Reconciler", "register_handlers"]

log = logging.getLogger(__name__)

GROUP = "dapr.io"
COMPONENTS = ("dapr.io", "v1alpha1", "components")
SUBSCRIPTIONS = ("dapr.io", "v2alpha1", "subscriptions")
REPORTER = "tidings-operator"


class NotLeader(RuntimeError):
    """Leadership was lost between taking a key and writing: the key is queued again."""


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """One unit of work. ``kind`` is ``app`` (name = app-id), ``component`` or ``subscription``."""

    kind: str
    namespace: str
    name: str


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (data or {}).items():
        try:
            out[k] = base64.b64decode(v).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue  # binary values cannot be component metadata; the key reads as absent
    return out


class Reconciler:
    """Renders app Secrets and writes Component/Subscription status; the only writer.

    ``core`` is a ``kubernetes.client.CoreV1Api``, ``custom`` a ``CustomObjectsApi``; calls run
    in threads. Indexes are attached by the first handler call (kopf passes the live objects).
    """

    def __init__(
        self,
        *,
        core: Any,
        custom: Any,
        leader: LeaderElector,
        resync_interval_s: float = 60.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.core = core
        self.custom = custom
        self.leader = leader
        self.resync_interval_s = resync_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._dirty: dict[Key, None] = {}
        self._wakeup = asyncio.Event()
        self._attempts: dict[Key, int] = {}
        self._indexes: dict[str, Any] | None = None
        self._indexed = asyncio.Event()
        self.instance = socket.gethostname()
        # Per app (namespace, app-id): the problems last logged, and why its config last could
        # not be written (too large), so a resync repeats neither the log lines nor the Event.
        self._problems: dict[tuple[str, str], frozenset[str]] = {}
        self._too_large: dict[tuple[str, str], str] = {}

    # ---- fed by handlers -------------------------------------------------------------------
    def attach(self, pods: Any, components: Any, subscriptions: Any) -> None:
        """Remember kopf's live indexes (idempotent)."""
        if self._indexes is None:
            self._indexes = {"pods": pods, "components": components, "subscriptions": subscriptions}
            self._indexed.set()

    def mark(self, keys: Iterable[Key]) -> None:
        """Queue ``keys`` (duplicates coalesce) and wake the worker."""
        for key in keys:
            self._dirty[key] = None
        self._wakeup.set()

    def apps_in(self, namespace: str) -> list[Key]:
        """Every app with injected pods in ``namespace``."""
        pods = self._indexes["pods"] if self._indexes else {}
        return [Key("app", ns, app) for (ns, app) in list(pods) if ns == namespace]

    def subscription_keys_in(self, namespace: str) -> list[Key]:
        """Every Subscription of ``namespace``: their verdicts depend on the namespace's
        Components (``PubsubNotFound``, Kafka topic names) and on each other (``Conflict``)."""
        return [
            Key("subscription", namespace, b["metadata"]["name"])
            for b in self.subscriptions_in(namespace)
        ]

    def components_in(self, namespace: str) -> list[dict[str, Any]]:
        return list(self._indexes["components"].get(namespace, [])) if self._indexes else []

    def subscriptions_in(self, namespace: str) -> list[dict[str, Any]]:
        return list(self._indexes["subscriptions"].get(namespace, [])) if self._indexes else []

    # ---- the worker ------------------------------------------------------------------------
    async def run(self) -> None:
        """Process marked keys while leader; resync every ``resync_interval_s``. Never returns."""
        await self._indexed.wait()
        resync = asyncio.create_task(self._resync_loop())
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                await self.leader.wait_leader()
                while self._dirty:
                    if not self.leader.is_leader:  # lost meanwhile: wait, keep the work
                        self._wakeup.set()
                        break
                    key = next(iter(self._dirty))
                    del self._dirty[key]
                    try:
                        await self._process(key)
                    except NotLeader:
                        self.mark([key])
                    except Exception:  # never let one key stop the worker
                        log.exception("unexpected failure on %s", key)
        finally:
            resync.cancel()

    async def _resync_loop(self) -> None:
        while True:
            await self.leader.wait_leader()
            await self.mark_everything()
            await asyncio.sleep(self.resync_interval_s)  # the resync period itself

    async def mark_everything(self) -> None:
        """Mark every known app, every config Secret we own (for GC) and every resource."""
        assert self._indexes is not None
        keys = [Key("app", ns, app) for (ns, app) in list(self._indexes["pods"])]
        try:
            secrets = await asyncio.to_thread(
                self.core.list_secret_for_all_namespaces,
                label_selector="app.kubernetes.io/managed-by=tidings-operator,"
                "app.kubernetes.io/component=app-config",
            )
            for s in secrets.items:
                app = (s.metadata.labels or {}).get(APP_ID_LABEL)
                if app:
                    keys.append(Key("app", s.metadata.namespace, app))
        except Exception:
            log.exception("resync: cannot list config Secrets")
        for kind, index in (("component", "components"), ("subscription", "subscriptions")):
            for ns in list(self._indexes[index]):
                for body in self._indexes[index].get(ns, []):
                    keys.append(Key(kind, ns, body["metadata"]["name"]))
        self.mark(keys)

    def check_leader(self) -> None:
        """Raise :class:`NotLeader` unless this replica may write now (called before each
        write, also from worker threads: a renew may have failed since the key was taken)."""
        if not self.leader.is_leader:
            raise NotLeader("leadership lost; not writing")

    async def _process(self, key: Key) -> None:
        log.debug("processing %s %s/%s", key.kind, key.namespace, key.name)
        try:
            if key.kind == "app":
                result = await asyncio.to_thread(self.sync_app, key.namespace, key.name)
                CONFIG_SECRETS.labels(result).inc()
            elif key.kind == "component":
                await self._validate(key, self._find(self.components_in(key.namespace), key))
            else:
                await self._validate(key, self._find(self.subscriptions_in(key.namespace), key))
            self._attempts.pop(key, None)
        except NotLeader:
            raise
        except Exception as exc:
            RECONCILE_ERRORS.labels(key.kind).inc()
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            delay = min(self.retry_max_s, self.retry_initial_s * 2 ** (attempt - 1))
            log.warning(
                "%s %s/%s failed (attempt %d), retrying in %.1f s: %s",
                key.kind,
                key.namespace,
                key.name,
                attempt,
                delay,
                exc,
                extra={
                    "namespace": key.namespace,
                    "kind": key.kind,
                    "resource": key.name,
                    "attempt": attempt,
                },
            )
            asyncio.get_running_loop().call_later(delay, self.mark, [key])

    @staticmethod
    def _find(bodies: list[dict[str, Any]], key: Key) -> dict[str, Any] | None:
        return next((b for b in bodies if b["metadata"]["name"] == key.name), None)

    # ---- app config ------------------------------------------------------------------------
    def read_secrets(self, namespace: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Referenced Secrets, decoded; a missing one is absent from the result."""
        from kubernetes.client import ApiException

        out: dict[str, dict[str, str]] = {}
        for name in sorted(set(names)):
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            out[name] = _decode(secret.data)
        return out

    def sync_app(self, namespace: str, app_id: str) -> str:
        """Make ``tidings-<app_id>`` match its render, or delete it when no pod is left.

        Returns what happened: ``created``/``updated``/``unchanged``/``deleted``/``absent``, or
        ``too-large``/``refused`` when the API server cannot take it (the last Secret stays; a
        Warning Event says why; no retry until something changes or the resync).
        """
        assert self._indexes is not None
        extra = {"app_id": app_id, "namespace": namespace}
        app = (namespace, app_id)
        pods = self._indexes["pods"].get(app)
        if not pods:
            self.check_leader()
            deleted = delete_app_secret(self.core, namespace=namespace, app_id=app_id)
            if deleted:
                log.info("app %s has no pods left: config Secret deleted", app_id, extra=extra)
            self._problems.pop(app, None)
            self._too_large.pop(app, None)
            return "deleted" if deleted else "absent"
        components = [c for c in self.components_in(namespace) if in_scope(c, app_id)]
        refs: set[str] = set()
        for c in components:
            refs |= secret_refs(c)
        rendered = render_app_config(
            app_id=app_id,
            components=components,
            subscriptions=self.subscriptions_in(namespace),
            secrets=self.read_secrets(namespace, refs),
        )
        self._log_problems(app, rendered.problems, extra)
        too_large = config_too_large(rendered)
        if too_large is not None:
            self._config_not_written(app, min(pods), "ConfigTooLarge", too_large, extra)
            return "too-large"
        self.check_leader()
        from kubernetes.client import ApiException

        try:
            result = apply_app_secret(
                self.core, secret_manifest(namespace=namespace, rendered=rendered)
            )
        except AppConfigConflict as exc:
            log.error("%s", exc, extra=extra)
            return "conflict"
        except ApiException as exc:
            if exc.status != 422:
                raise  # the worker retries with back-off
            # Refused as invalid (e.g. a size limit we do not know of): retrying cannot help
            # until something changes, which marks the app again (or the resync does).
            self._config_not_written(
                app,
                min(pods),
                "ConfigRefused",
                f"the API server refused the config Secret of app "
                f"{app_id}: {exc.reason}: {str(exc.body)[:500]}",
                extra,
            )
            return "refused"
        if self._too_large.pop(app, None) is not None:
            log.info("app %s: config fits again", app_id, extra=extra)
        if result != "unchanged":
            log.info(
                "app %s config Secret %s: components=%s subscriptions=%s",
                app_id,
                result,
                ",".join(rendered.components),
                ",".join(rendered.subscriptions),
                extra={**extra, "result": result},
            )
        return result

    def _log_problems(
        self, app: tuple[str, str], problems: Iterable[str], extra: Mapping[str, Any]
    ) -> None:
        """Log what is left out of an app's config when that changes, not on every resync."""
        now = frozenset(problems)
        before = self._problems.get(app, frozenset())
        for problem in sorted(now - before):
            log.warning("app %s: left out of its config: %s", app[1], problem, extra=extra)
        if before - now:
            log.info("app %s: %d problem(s) resolved", app[1], len(before - now), extra=extra)
        self._problems[app] = now

    def _config_not_written(
        self, app: tuple[str, str], pod: str, reason: str, why: str, extra: Mapping[str, Any]
    ) -> None:
        """The config cannot be written: keep the last Secret, say so once (log line and a
        Warning Event, ``reason`` e.g. ``ConfigTooLarge``, on one of the app's pods, where
        ``kubectl describe pod`` shows it)."""
        if self._too_large.get(app) == why:
            return
        self.post_event(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": app[0]}},
            Verdict(False, reason, why),
        )
        self._too_large[app] = why
        log.error(
            "app %s: config Secret not written, the sidecars keep the last one: %s",
            app[1],
            why,
            extra={**extra, "reason": reason},
        )

    # ---- status ----------------------------------------------------------------------------
    async def _validate(self, key: Key, body: dict[str, Any] | None) -> None:
        if body is None:
            return  # deleted meanwhile
        if key.kind == "component":
            secrets = await asyncio.to_thread(self.read_secrets, key.namespace, secret_refs(body))
            verdict = validate_component(body, secrets)
        else:
            verdict = validate_subscription(
                body,
                components=self.components_in(key.namespace),
                subscriptions=self.subscriptions_in(key.namespace),
            )
        await asyncio.to_thread(self.write_status, key, body, verdict)

    def write_status(self, key: Key, body: Mapping[str, Any], verdict: Verdict) -> bool:
        """Patch ``status.conditions`` and post an Event if the Ready condition changed."""
        from kubernetes.client import ApiException

        meta = body["metadata"]
        conditions = (body.get("status") or {}).get("conditions") or []
        previous = next((c for c in conditions if c.get("type") == "Ready"), None)
        condition = ready_condition(verdict, generation=meta.get("generation"), previous=previous)
        if previous == condition:
            return False
        others = [c for c in conditions if c.get("type") != "Ready"]
        patch = {"status": {"conditions": [*others, condition]}}
        plural = "components" if key.kind == "component" else "subscriptions"
        versions = ["v1alpha1"] if key.kind == "component" else ["v2alpha1", "v1alpha1"]
        for i, version in enumerate(versions):
            self.check_leader()
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, version, key.namespace, plural, key.name, patch
                )
                break
            except ApiException as exc:
                if exc.status == 404:
                    return False  # deleted meanwhile
                # An object written as v1alpha1 may not validate as v2alpha1 (conversion: None).
                if exc.status == 422 and i + 1 < len(versions):
                    continue
                raise
        self.post_event(body, verdict)
        log.log(
            logging.INFO if verdict.ok else logging.WARNING,
            "%s %s/%s: %s: %s",
            body.get("kind"),
            key.namespace,
            key.name,
            verdict.reason,
            verdict.message,
            extra={"namespace": key.namespace, "resource": key.name, "reason": verdict.reason},
        )
        return True

    def post_event(self, body: Mapping[str, Any], verdict: Verdict) -> None:
        """A ``v1/Event`` on the resource: Normal for valid, Warning for invalid."""
        meta = body["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": verdict.reason,
            "message": verdict.message[:1024],
            "type": "Normal" if verdict.ok else "Warning",
            "source": {"component": REPORTER},
            "reportingComponent": REPORTER,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.check_leader()
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except Exception:  # an Event is informative; the condition is already written
            log.warning(
                "cannot post an Event for %s/%s", meta["namespace"], meta["name"], exc_info=True
            )


def register_handlers(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register the indexes and watch handlers on ``registry``; they only mark work."""

    @kopf.index("pods", labels={INJECTED_LABEL: "true"}, id="tidings_pods", registry=registry)
    def tidings_pods(
        namespace: str, labels: Mapping[str, str], name: str, **_: Any
    ) -> dict[tuple[str, str], str]:
        app = labels.get(APP_ID_LABEL)
        return {(namespace, app): name} if app else {}

    @kopf.index(*COMPONENTS, id="tidings_components", registry=registry)
    def tidings_components(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {namespace: _plain(body)}

    @kopf.index(*SUBSCRIPTIONS, id="tidings_subscriptions", registry=registry)
    def tidings_subscriptions(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {namespace: _plain(body)}

    def attach(kwargs: Mapping[str, Any]) -> None:
        reconciler.attach(
            kwargs["tidings_pods"], kwargs["tidings_components"], kwargs["tidings_subscriptions"]
        )

    @kopf.on.event("pods", labels={INJECTED_LABEL: "true"}, registry=registry)
    async def pod_event(namespace: str, labels: Mapping[str, str], **kwargs: Any) -> None:
        attach(kwargs)
        app = labels.get(APP_ID_LABEL)
        if app:
            reconciler.mark([Key("app", namespace, app)])

    def resource_changed(kind: str, namespace: str, name: str, type: str | None) -> None:
        # Every app of the namespace re-renders, and every Subscription re-validates: a change
        # may start or end a PubsubNotFound or a Conflict.
        keys = [*reconciler.apps_in(namespace), *reconciler.subscription_keys_in(namespace)]
        if type != "DELETED":
            keys.append(Key(kind, namespace, name))
        reconciler.mark(keys)

    @kopf.on.event(*COMPONENTS, registry=registry)
    async def component_event(namespace: str, name: str, type: str | None, **kwargs: Any) -> None:
        attach(kwargs)
        resource_changed("component", namespace, name, type)

    @kopf.on.event(*SUBSCRIPTIONS, registry=registry)
    async def subscription_event(
        namespace: str, name: str, type: str | None, **kwargs: Any
    ) -> None:
        attach(kwargs)
        resource_changed("subscription", namespace, name, type)

    @kopf.on.event("secrets", registry=registry)
    async def secret_event(
        namespace: str, name: str, meta: Mapping[str, Any], **kwargs: Any
    ) -> None:
        attach(kwargs)
        if is_ours(meta):
            app = (meta.get("labels") or {}).get(APP_ID_LABEL)
            if app:
                reconciler.mark([Key("app", namespace, app)])
            return
        users = [c for c in reconciler.components_in(namespace) if name in secret_refs(c)]
        if users:
            reconciler.mark(
                [
                    *(Key("component", namespace, c["metadata"]["name"]) for c in users),
                    *reconciler.apps_in(namespace),
                ]
            )
