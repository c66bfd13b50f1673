"""Read a resources folder: the YAML files users ``kubectl apply``, one or many documents each.

This is the only reader of resource files. The sidecar calls it at start-up and again when the
folder changes (hot reload, written by the operator's per-app Secret); the operator calls
:func:`check_component` to validate exactly as the sidecar will.

Rules (dapr-pubsub-contract.md §3.1-§3.3):
- files ``*.yaml``, ``*.yml`` and ``*.json`` directly in each folder, in name order;
- documents of other kinds (``Configuration``, ``Resiliency``...) are ignored;
- a Component or Subscription whose non-empty ``scopes`` lacks the app-id is skipped;
- an unknown component type, a duplicate component name, a missing required field or a
  Subscription routing rule whose CEL ``match`` does not compile raises :class:`ResourceError`
  naming the file and field: the sidecar refuses to start, and a hot reload keeps the running
  configuration. Dapr only logs a bad declarative Subscription and runs without it; here a
  resource file is checked as a whole, as for Components, so the mistake is seen at once rather
  than as a topic that silently is not consumed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .jetstream import COMPONENT_TYPE as JETSTREAM_TYPE
from .jetstream import JetStreamMetadata, parse_jetstream_metadata
from .kafka import COMPONENT_TYPE as KAFKA_TYPE
from .kafka import KafkaMetadata, parse_kafka_metadata
from .models import Component, ResourceError, TopicSubscription, parse_resource
from .redis import COMPONENT_TYPE as REDIS_TYPE
from .redis import RedisMetadata, parse_redis_metadata
from .rules import compile_rules

log = logging.getLogger(__name__)

IN_MEMORY_TYPE = "pubsub.in-memory"
SUPPORTED_TYPES = (KAFKA_TYPE, REDIS_TYPE, JETSTREAM_TYPE, IN_MEMORY_TYPE)
RESOURCE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class LoadedComponent:
    """A pub/sub component ready to start: its resource, resolved metadata and checked settings.

    ``kafka`` is set for ``pubsub.kafka``, ``redis`` for ``pubsub.redis``, ``jetstream`` for
    ``pubsub.jetstream``; all are ``None`` for ``pubsub.in-memory``.
    """

    component: Component
    source: str
    metadata: dict[str, str]
    kafka: KafkaMetadata | None = None
    redis: RedisMetadata | None = None
    jetstream: JetStreamMetadata | None = None

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def type(self) -> str:
        return self.component.spec.type


@dataclass(frozen=True, slots=True)
class Resources:
    """What one app's sidecar runs with: components by name and declarative subscriptions."""

    components: dict[str, LoadedComponent] = field(default_factory=dict)
    subscriptions: tuple[TopicSubscription, ...] = ()


def _in_scope(scopes: list[str], app_id: str) -> bool:
    return not scopes or app_id in scopes


def resolve_metadata(
    component: Component, *, source: str, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``spec.metadata`` as strings, with ``envRef`` values read from ``environ``.

    ``secretKeyRef`` cannot be resolved here (the sidecar has no API access); the operator
    resolves them into plain values before writing the app's config. One left unresolved raises
    :class:`ResourceError`.
    """
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for i, item in enumerate(component.spec.metadata):
        where = f"spec.metadata[{i}].{item.name}"
        if item.secretKeyRef is not None:
            raise ResourceError(
                f"secretKeyRef {item.secretKeyRef.name}/{item.secretKeyRef.key} is not resolved; "
                "outside Kubernetes write the value, or use envRef",
                source=source,
                field=where,
            )
        if item.envRef is not None:
            if item.envRef not in env:
                raise ResourceError(
                    f"environment variable {item.envRef} is not set", source=source, field=where
                )
            values[item.name] = env[item.envRef]
            continue
        rendered = item.rendered()
        if rendered is not None:
            values[item.name] = rendered
    return values


def check_component(
    component: Component,
    *,
    app_id: str,
    source: str,
    metadata: Mapping[str, str] | None = None,
) -> LoadedComponent:
    """Validate a component's type and metadata for ``app_id``.

    ``metadata`` is the resolved ``{name: value}``; when ``None`` it is resolved from the resource
    itself (see :func:`resolve_metadata`). Raises :class:`ResourceError`.
    """
    ctype = component.spec.type
    if ctype not in SUPPORTED_TYPES:
        raise ResourceError(
            f"component type {ctype!r} is not supported (supported: {', '.join(SUPPORTED_TYPES)})",
            source=source,
            field="spec.type",
        )
    if component.spec.version != "v1":
        raise ResourceError(
            f"version {component.spec.version!r} of {ctype} is not supported (use v1)",
            source=source,
            field="spec.version",
        )
    values = dict(metadata) if metadata is not None else resolve_metadata(component, source=source)
    kafka = (
        parse_kafka_metadata(values, app_id=app_id, source=source) if ctype == KAFKA_TYPE else None
    )
    redis = (
        parse_redis_metadata(values, app_id=app_id, source=source) if ctype == REDIS_TYPE else None
    )
    jetstream = (
        parse_jetstream_metadata(values, app_id=app_id, source=source)
        if ctype == JETSTREAM_TYPE
        else None
    )
    return LoadedComponent(
        component=component,
        source=source,
        metadata=values,
        kafka=kafka,
        redis=redis,
        jetstream=jetstream,
    )


def resource_files(paths: Iterable[Path | str]) -> list[Path]:
    """The resource files of ``paths`` (folders or single files), in a stable order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(
                sorted(
                    f
                    for f in p.iterdir()
                    if f.suffix in RESOURCE_SUFFIXES and f.is_file() and not f.name.startswith(".")
                )
            )
        elif p.is_file():
            files.append(p)
        else:
            raise ResourceError("no such file or folder", source=str(p))
    return files


def _check_rules(subscription: TopicSubscription, *, source: str) -> None:
    """Compile the subscription's CEL rules once here so a bad ``match`` names its file.

    Raises :class:`ResourceError` with ``source`` = the file and ``field`` =
    ``spec.routes.rules[i].match``. Compiling imports the CEL library, so only files with rules
    pay for it.
    """
    try:
        compile_rules(subscription)
    except ResourceError as exc:
        raise ResourceError(
            f"subscription {subscription.name!r}: {exc.message}",
            source=source,
            field=f"spec.{exc.field}",
        ) from None


def load_resources(paths: Iterable[Path | str], *, app_id: str) -> Resources:
    """Load every Component and Subscription in ``paths`` that is in scope for ``app_id``.

    Raises :class:`ResourceError` (with ``source`` = the file) for YAML that does not parse, a
    resource the runtime would refuse, or two components with the same name.
    """
    components: dict[str, LoadedComponent] = {}
    defined_at: dict[str, str] = {}  # component name -> "file" or "file (document i)"
    subscriptions: list[TopicSubscription] = []
    for path in resource_files(paths):
        source = str(path)
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ResourceError(f"cannot parse: {exc}", source=source) from None
        for index, doc in enumerate(docs):
            resource = parse_resource(doc, source=source)
            if resource is None or not _in_scope(resource.scopes, app_id):
                continue
            # Documents are counted from 0 like ``yq``'s documentIndex; named only in files with
            # several, where the file alone does not say which one is meant.
            where = f"{source} (document {index})" if len(docs) > 1 else source
            if isinstance(resource, Component):
                if resource.name in components:
                    raise ResourceError(
                        f"component {resource.name!r} is also defined in "
                        f"{defined_at[resource.name]}",
                        source=where,
                        field="metadata.name",
                    )
                components[resource.name] = check_component(resource, app_id=app_id, source=source)
                defined_at[resource.name] = where
            else:
                subscription = resource.to_topic_subscription()
                _check_rules(subscription, source=where)
                subscriptions.append(subscription)
    for sub in subscriptions:
        if sub.pubsubname not in components:
            log.warning(
                "subscription %r names pubsub %r, which is not configured; it is ignored "
                "until the component exists",
                sub.name,
                sub.pubsubname,
                extra={"app_id": app_id, "pubsubname": sub.pubsubname, "topic": sub.topic},
            )
    return Resources(components=components, subscriptions=tuple(subscriptions))
