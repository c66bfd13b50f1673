"""Each app's broker config: the Secret ``tidings-<app-id>`` its sidecar mounts as resources folder.

Rendering is pure (:func:`render_app_config`): from the namespace's Components and Subscriptions
and the Kubernetes Secrets they reference, keep those scoped to the app
(dapr-pubsub-contract.md §3.1, §3.2: empty ``scopes`` means every app), resolve every
``secretKeyRef`` into a plain value (the sidecar has no API access), validate each with the
sidecar's own models (``tidings.sidecar.resources``) and write one YAML file per resource, the
format ``load_resources`` reads. A resource the sidecar would refuse is left out and reported in
``problems``, so one bad Component cannot stop every sidecar of the namespace.

:func:`apply_app_secret` and :func:`delete_app_secret` are the only writers of Secrets; they touch
only Secrets labelled as ours. Neighbours: ``handlers.py`` decides when to render,
``validation.py`` reports per-resource status.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tidings.sidecar.resources import (
    Component,
    ResourceError,
    TopicSubscription,
    check_component,
    parse_resource,
)
from tidings.sidecar.resources.jetstream import COMPONENT_TYPE as JETSTREAM_TYPE
from tidings.sidecar.resources.jetstream import filter_subject_problem, subject_problem
from tidings.sidecar.resources.kafka import COMPONENT_TYPE as KAFKA_TYPE
from tidings.sidecar.resources.kafka_topics import invalid_topic_message, kafka_topic_problem
from tidings.sidecar.resources.rules import compile_rules

from .sidecar_patch import config_secret_name

__all__ = [
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "SECRET_MAX_BYTES",
    "AppConfigConflict",
    "RenderedConfig",
    "apply_app_secret",
    "check_subscription",
    "config_too_large",
    "delete_app_secret",
    "normalise_subscription",
    "render_app_config",
    "resolve_secret_refs",
    "secret_manifest",
    "secret_refs",
    "subscription_file",
]

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tidings-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
APP_CONFIG = "app-config"
APP_ID_LABEL = "dapr.io/app-id"
KUBERNETES_SECRET_STORE = "kubernetes"

SECRET_MAX_BYTES = 1024 * 1024
"""The API server refuses a Secret whose data values add up to more (``MaxSecretSize``, 1 MiB:
``k8s.io/kubernetes/pkg/apis/core/validation.ValidateSecret`` counts the decoded values)."""

SecretData = Mapping[str, Mapping[str, str]]
"""Kubernetes Secrets of one namespace by name, their data decoded to text."""


class AppConfigConflict(RuntimeError):
    """A Secret named ``tidings-<app-id>`` exists and is not ours: it is never overwritten."""


def in_scope(body: Mapping[str, Any], app_id: str) -> bool:
    """Dapr's rule: empty or absent ``scopes`` means every app of the namespace."""
    scopes = body.get("scopes") or []
    return not scopes or app_id in scopes


def normalise_subscription(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Subscription as ``dapr.io/v2alpha1``, whatever version it was written in.

    The CRD has ``conversion: None`` (no webhook), so an object written as v1alpha1 reads back
    through v2alpha1 still carrying ``spec.route``; this does what Dapr's conversion does:
    ``route`` becomes ``routes.default``.
    """
    out = copy.deepcopy(dict(body))
    spec = out.get("spec")
    if isinstance(spec, dict) and "route" in spec and not spec.get("routes"):
        spec["routes"] = {"default": spec.pop("route")}
    elif isinstance(spec, dict):
        spec.pop("route", None)
    out["apiVersion"] = "dapr.io/v2alpha1"
    return out


def secret_refs(body: Mapping[str, Any]) -> set[str]:
    """Names of the Kubernetes Secrets a Component's ``spec.metadata`` references."""
    names: set[str] = set()
    for item in (body.get("spec") or {}).get("metadata") or []:
        ref = item.get("secretKeyRef") if isinstance(item, dict) else None
        if isinstance(ref, dict) and ref.get("name"):
            names.add(str(ref["name"]))
    return names


def resolve_secret_refs(
    component: Component, secrets: SecretData, *, source: str
) -> dict[str, Any]:
    """The Component as a plain document with every ``secretKeyRef`` replaced by its value.

    Dapr's Kubernetes secret store reads ``key`` from the Secret, and with an empty ``key`` the
    key named like the Secret. Raises :class:`ResourceError` naming the field for a missing
    Secret or key, or a secret store other than ``kubernetes``.
    """
    store = component.auth.secretStore if component.auth else KUBERNETES_SECRET_STORE
    items: list[dict[str, Any]] = []
    for i, item in enumerate(component.spec.metadata):
        where = f"spec.metadata[{i}].{item.name}"
        if item.secretKeyRef is None:
            items.append(item.model_dump(exclude_none=True, exclude={"secretKeyRef"}))
            continue
        if store != KUBERNETES_SECRET_STORE:
            raise ResourceError(
                f"auth.secretStore {store!r} is not supported; only {KUBERNETES_SECRET_STORE!r}",
                source=source,
                field=where,
            )
        ref = item.secretKeyRef
        key = ref.key or ref.name
        data = secrets.get(ref.name)
        if data is None:
            raise ResourceError(f"Secret {ref.name!r} not found", source=source, field=where)
        if key not in data:
            raise ResourceError(
                f"Secret {ref.name!r} has no key {key!r}", source=source, field=where
            )
        items.append({"name": item.name, "value": data[key]})
    return {
        "apiVersion": component.apiVersion,
        "kind": component.kind,
        "metadata": {
            "name": component.name,
            **({"namespace": component.metadata.namespace} if component.metadata.namespace else {}),
        },
        "spec": {
            **component.spec.model_dump(exclude_none=True, exclude={"metadata"}),
            "metadata": items,
        },
        **({"scopes": list(component.scopes)} if component.scopes else {}),
    }


def check_for_sidecar(component: Component, *, app_id: str, source: str) -> None:
    """:func:`check_component` as far as the operator can tell. ``envRef`` values come from the
    sidecar's environment, which the operator does not see: a field given by ``envRef`` gets a
    stand-in value (``"1"``: a number, a duration in ms, a boolean and a name alike) so the other
    fields are still checked; one that fails even so is left to the sidecar. Raises
    :class:`ResourceError` for anything else."""
    from_env = {
        item.name.lower(): item.name for item in component.spec.metadata if item.envRef is not None
    }
    values = {
        item.name: value
        for item in component.spec.metadata
        if item.envRef is None and (value := item.rendered()) is not None
    }
    for _ in range(len(from_env) + 1):
        try:
            check_component(component, app_id=app_id, source=source, metadata=values)
            return
        except ResourceError as exc:
            name = from_env.get(exc.field.rsplit(".", 1)[-1].lower())
            if name is None:
                raise
            if name in values:
                return  # only the sidecar's environment can tell
            values[name] = "1"


def check_subscription(
    subscription: TopicSubscription, *, kafka: bool, source: str, jetstream: bool = False
) -> None:
    """Raise :class:`ResourceError` (naming the field) for what makes the sidecar drop a
    subscription by itself (``tidings.sidecar.delivery.subscriptions.effective_subscriptions``): a
    CEL rule that does not compile, no route at all (``routes: {}``: "empty routes") and, when its
    pubsub is a Kafka component (``kafka``), a topic or ``deadLetterTopic`` Kafka cannot hold;
    on a JetStream component (``jetstream``), a topic that is no NATS subject filter or a
    ``deadLetterTopic`` one cannot publish to.

    The sidecar keeps one subscription per (pubsubname, topic) *before* dropping these, so one
    left in the config would displace a valid one for the same topic.
    """
    compile_rules(subscription)
    if not subscription.rules and not subscription.default_path:
        raise ResourceError(
            "routes has no rules and no default: the sidecar drops a "
            "subscription with empty routes",
            source=source,
            field="routes",
        )
    if kafka:
        for field_name, topic in (
            ("topic", subscription.topic),
            ("deadLetterTopic", subscription.dead_letter_topic),
        ):
            problem = kafka_topic_problem(topic) if topic else None
            if problem is not None:
                raise ResourceError(
                    invalid_topic_message(topic, problem), source=source, field=field_name
                )
    if jetstream:
        problem = filter_subject_problem(subscription.topic)
        if problem is not None:
            raise ResourceError(
                f"topic {subscription.topic!r} is not a NATS subject: {problem}",
                source=source,
                field="topic",
            )
        dlt = subscription.dead_letter_topic
        problem = subject_problem(dlt) if dlt else None
        if problem is not None:
            raise ResourceError(
                f"{dlt!r} is not a NATS subject one can publish to: {problem}",
                source=source,
                field="deadLetterTopic",
            )


def is_kafka(body: Mapping[str, Any]) -> bool:
    """Whether a Component body is of type ``pubsub.kafka``."""
    return (body.get("spec") or {}).get("type") == KAFKA_TYPE


def is_jetstream(body: Mapping[str, Any]) -> bool:
    """Whether a Component body is of type ``pubsub.jetstream``."""
    return (body.get("spec") or {}).get("type") == JETSTREAM_TYPE


def subscription_file(name: str) -> str:
    """The file a Subscription gets in the app's resources folder. The sidecar reads the folder
    in file name order, and of two declarative subscriptions for one topic keeps the last."""
    return f"subscription-{name}.yaml"


def _source(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/")


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    """One app's resources folder: ``files`` (file name → YAML), what went in, what was left out."""

    app_id: str
    files: dict[str, str]
    components: tuple[str, ...]
    subscriptions: tuple[str, ...]
    problems: tuple[str, ...]


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=True, default_flow_style=False)


def render_app_config(
    *,
    app_id: str,
    components: Iterable[Mapping[str, Any]],
    subscriptions: Iterable[Mapping[str, Any]],
    secrets: SecretData,
) -> RenderedConfig:
    """Render ``app_id``'s resources folder from the namespace's resources (API objects as dicts).

    Pure and deterministic: the same inputs give the same files, so an unchanged config is never
    rewritten. Never raises for a bad resource: it is left out and described in ``problems``.
    """
    files: dict[str, str] = {}
    included_c: list[str] = []
    included_s: list[str] = []
    problems: list[str] = []
    kafka_pubsubs: set[str] = set()
    jetstream_pubsubs: set[str] = set()
    for body in sorted(components, key=lambda b: str((b.get("metadata") or {}).get("name"))):
        if not in_scope(body, app_id):
            continue
        source = _source(body)
        try:
            component = parse_resource(dict(body), source=source)
            if not isinstance(component, Component):
                raise ResourceError("not a dapr.io/v1alpha1 Component", source=source)
            doc = resolve_secret_refs(component, secrets, source=source)
            plain = parse_resource(doc, source=source)
            assert isinstance(plain, Component)
            check_for_sidecar(plain, app_id=app_id, source=source)
        except ResourceError as exc:
            problems.append(f"Component {exc}")
            continue
        files[f"component-{component.name}.yaml"] = _dump(doc)
        included_c.append(component.name)
        if plain.spec.type == KAFKA_TYPE:
            kafka_pubsubs.add(component.name)
        if plain.spec.type == JETSTREAM_TYPE:
            jetstream_pubsubs.add(component.name)
    for body in sorted(subscriptions, key=lambda b: str((b.get("metadata") or {}).get("name"))):
        if not in_scope(body, app_id):
            continue
        source = _source(body)
        doc = normalise_subscription(body)
        try:
            subscription = parse_resource(doc, source=source)
            if subscription is None or isinstance(subscription, Component):
                raise ResourceError("not a dapr.io Subscription", source=source)
            # What the sidecar would drop would also displace a valid subscription for the same
            # topic; leave it out here instead.
            ts = subscription.to_topic_subscription()
            check_subscription(
                ts,
                kafka=ts.pubsubname in kafka_pubsubs,
                source=source,
                jetstream=ts.pubsubname in jetstream_pubsubs,
            )
        except ResourceError as exc:
            problems.append(f"Subscription {exc}")
            continue
        meta = doc.get("metadata") or {}
        out = {
            "apiVersion": doc["apiVersion"],
            "kind": "Subscription",
            "metadata": {
                "name": meta["name"],
                **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            },
            "spec": doc["spec"],
        }
        if doc.get("scopes"):
            out["scopes"] = list(doc["scopes"])
        files[subscription_file(subscription.name)] = _dump(out)
        included_s.append(subscription.name)
    return RenderedConfig(
        app_id=app_id,
        files=files,
        components=tuple(included_c),
        subscriptions=tuple(included_s),
        problems=tuple(problems),
    )


def config_too_large(rendered: RenderedConfig) -> str | None:
    """Why the API server would refuse ``rendered`` as a Secret (its files add up to more than
    :data:`SECRET_MAX_BYTES`), or ``None`` when it fits. The message names the largest files."""
    sizes = {name: len(text.encode()) for name, text in rendered.files.items()}
    total = sum(sizes.values())
    if total <= SECRET_MAX_BYTES:
        return None
    largest = sorted(sizes, key=lambda n: (-sizes[n], n))[:3]
    return (
        f"the config of app {rendered.app_id} is {total} bytes, more than a Secret can hold "
        f"({SECRET_MAX_BYTES} bytes); largest: "
        + ", ".join(f"{n} ({sizes[n]} bytes)" for n in largest)
    )


def secret_manifest(*, namespace: str, rendered: RenderedConfig) -> dict[str, Any]:
    """The ``v1/Secret`` holding ``rendered``: labelled as ours and with the app-id."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": config_secret_name(rendered.app_id),
            "namespace": namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                COMPONENT_LABEL: APP_CONFIG,
                APP_ID_LABEL: rendered.app_id,
            },
        },
        "data": {
            name: base64.b64encode(text.encode()).decode("ascii")
            for name, text in sorted(rendered.files.items())
        },
    }


def is_ours(secret_meta: Mapping[str, Any]) -> bool:
    labels = secret_meta.get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(COMPONENT_LABEL) == APP_CONFIG


def apply_app_secret(core: Any, manifest: Mapping[str, Any]) -> str:
    """Create or replace the Secret ``manifest`` if its data or labels differ.

    ``core`` is a ``kubernetes.client.CoreV1Api``. Returns ``"created"``, ``"updated"`` or
    ``"unchanged"``. Raises :class:`AppConfigConflict` for an existing Secret that is not ours
    and ``kubernetes.client.ApiException`` for API errors (the caller retries).
    """
    from kubernetes.client import ApiException

    meta = manifest["metadata"]
    try:
        current = core.read_namespaced_secret(meta["name"], meta["namespace"])
    except ApiException as exc:
        if exc.status != 404:
            raise
        # A 409 (created meanwhile) propagates; the caller's retry then compares and replaces.
        core.create_namespaced_secret(meta["namespace"], dict(manifest))
        return "created"
    current_meta = {"labels": current.metadata.labels or {}}
    if not is_ours(current_meta):
        raise AppConfigConflict(
            f"Secret {meta['namespace']}/{meta['name']} exists and is not "
            f"labelled {MANAGED_BY_LABEL}={MANAGED_BY}; not overwriting it"
        )
    if (current.data or {}) == manifest["data"] and all(
        current_meta["labels"].get(k) == v for k, v in meta["labels"].items()
    ):
        return "unchanged"
    body = copy.deepcopy(dict(manifest))
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    core.replace_namespaced_secret(meta["name"], meta["namespace"], body)
    return "updated"


def delete_app_secret(core: Any, *, namespace: str, app_id: str) -> bool:
    """Delete ``tidings-<app_id>`` if it exists and is ours. Returns whether one was deleted."""
    from kubernetes.client import ApiException

    name = config_secret_name(app_id)
    try:
        current = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    if not is_ours({"labels": current.metadata.labels or {}}):
        return False
    try:
        core.delete_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
