"""The one model of Dapr's declarative resources: Component and Subscription.

Shapes follow what users ``kubectl apply`` (dapr-pubsub-contract.md §3.1, §3.2): ``scopes`` and
``auth`` sit at the top level, not under ``spec``. Subscriptions are read in both served versions
(``dapr.io/v1alpha1`` with ``spec.route``, ``dapr.io/v2alpha1`` with ``spec.routes``) and normalised
to :class:`TopicSubscription`, the runtime's view, which programmatic subscriptions
(``GET /dapr/subscribe``, §2.1) share.

The operator imports this module to validate resources exactly as the sidecar will; it imports
nothing else from the sidecar. Neighbours: ``loading.py`` reads files into these models,
``kafka.py`` checks ``pubsub.kafka`` metadata.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "BulkOptions",
    "Component",
    "MetadataItem",
    "ResourceError",
    "Route",
    "SecretKeyRef",
    "Subscription",
    "SubscriptionType",
    "SubscriptionV1alpha1",
    "SubscriptionV2alpha1",
    "TopicSubscription",
    "parse_resource",
]

API_GROUP = "dapr.io"


class ResourceError(ValueError):
    """A resource that the runtime would refuse.

    ``source`` names where it came from (a file path, ``namespace/name``, or ``/dapr/subscribe``);
    ``field`` is the dotted path of the offending field (``spec.metadata.brokers``), or ``""``.
    """

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        self.message = message
        self.source = source
        self.field = field
        where = ", ".join(p for p in (source, f"field {field}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class _Model(BaseModel):
    # Unknown keys are tolerated like the API server does for preserved fields, so a resource
    # written for a newer Dapr still loads.
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class ObjectMeta(_Model):
    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretKeyRef(_Model):
    """Reference to a key of a Kubernetes Secret (``auth.secretStore``, default ``kubernetes``)."""

    name: str = Field(min_length=1)
    key: str = ""


class MetadataItem(_Model):
    """One ``spec.metadata[]`` entry: a value, a ``secretKeyRef`` or an ``envRef`` (§3.2)."""

    name: str = Field(min_length=1)
    value: Any = None
    secretKeyRef: SecretKeyRef | None = None
    envRef: str | None = None

    def rendered(self) -> str | None:
        """The value as the component sees it: Dapr renders any JSON value to a string."""
        if self.value is None:
            return None
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, (dict, list)):
            import json

            return json.dumps(self.value, separators=(",", ":"))
        return str(self.value)


class ComponentSpec(_Model):
    type: str = Field(min_length=1)
    version: str = Field(min_length=1)
    initTimeout: str | None = None
    ignoreErrors: bool = False
    metadata: list[MetadataItem] = Field(default_factory=list)


class ComponentAuth(_Model):
    secretStore: str = "kubernetes"


class Component(_Model):
    """``components.dapr.io/v1alpha1``."""

    apiVersion: Literal["dapr.io/v1alpha1"]
    kind: Literal["Component"]
    metadata: ObjectMeta
    spec: ComponentSpec
    auth: ComponentAuth | None = None
    scopes: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.metadata.name

    def metadata_values(self) -> dict[str, str]:
        """``spec.metadata`` as ``{name: value}``; unresolved secret/env refs are left out.

        Names keep their case: Dapr matches Kafka keys case-insensitively, which the component
        parser does (``kafka.py``).
        """
        return {m.name: v for m in self.spec.metadata if (v := m.rendered()) is not None}


class Rule(_Model):
    match: str
    path: str


class RoutesV2(_Model):
    rules: list[Rule] = Field(default_factory=list)
    default: str | None = None


class BulkSubscribe(_Model):
    enabled: bool
    maxMessagesCount: int | None = None
    maxAwaitDurationMs: int | None = None


class _SubscriptionSpecBase(_Model):
    pubsubname: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    deadLetterTopic: str | None = None
    bulkSubscribe: BulkSubscribe | None = None


class SubscriptionSpecV1(_SubscriptionSpecBase):
    route: str = Field(min_length=1)


class SubscriptionSpecV2(_SubscriptionSpecBase):
    routes: RoutesV2


class _SubscriptionBase(_Model):
    kind: Literal["Subscription"]
    metadata: ObjectMeta
    spec: SubscriptionSpecV1 | SubscriptionSpecV2
    scopes: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_topic_subscription(self) -> TopicSubscription:
        spec = self.spec
        if isinstance(spec, SubscriptionSpecV1):
            rules: tuple[Route, ...] = ()
            default = spec.route
        else:
            rules = tuple(Route(match=r.match, path=r.path) for r in spec.routes.rules)
            default = spec.routes.default
        return TopicSubscription(
            pubsubname=spec.pubsubname,
            topic=spec.topic,
            rules=rules,
            default_path=default or None,
            metadata=dict(spec.metadata),
            dead_letter_topic=spec.deadLetterTopic or None,
            type=SubscriptionType.DECLARATIVE,
            name=self.name,
            bulk=(
                BulkOptions.of(
                    spec.bulkSubscribe.maxMessagesCount, spec.bulkSubscribe.maxAwaitDurationMs
                )
                if spec.bulkSubscribe is not None and spec.bulkSubscribe.enabled
                else None
            ),
        )


class SubscriptionV1alpha1(_SubscriptionBase):
    """``subscriptions.dapr.io/v1alpha1``: one ``spec.route``."""

    apiVersion: Literal["dapr.io/v1alpha1"]
    spec: SubscriptionSpecV1


class SubscriptionV2alpha1(_SubscriptionBase):
    """``subscriptions.dapr.io/v2alpha1`` (the stored version): ``spec.routes`` with CEL rules."""

    apiVersion: Literal["dapr.io/v2alpha1"]
    spec: SubscriptionSpecV2


Subscription = SubscriptionV1alpha1 | SubscriptionV2alpha1


class SubscriptionType(str, enum.Enum):
    """How a subscription was declared; reported by ``GET /v1.0/metadata`` (§1.4)."""

    DECLARATIVE = "DECLARATIVE"
    PROGRAMMATIC = "PROGRAMMATIC"
    STREAMING = "STREAMING"  # an app's SubscribeTopicEventsAlpha1 stream (§1.6)


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule: a CEL ``match`` (``""`` always matches) and the app path to POST to."""

    match: str
    path: str


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """An enabled ``bulkSubscribe`` (dapr-pubsub-contract.md §2.4): deliver up to
    ``max_messages_count`` events per request, waiting at most ``max_await_duration_ms``
    milliseconds for a batch to fill. ``None`` means the broker's default (Kafka: 80 and
    10000 ms, as Dapr's Kafka component)."""

    max_messages_count: int | None = None
    max_await_duration_ms: int | None = None

    @classmethod
    def of(cls, max_messages_count: int | None, max_await_duration_ms: int | None) -> BulkOptions:
        """Options with values that are not positive read as unset (Dapr's rule)."""
        return cls(
            max_messages_count if max_messages_count and max_messages_count > 0 else None,
            max_await_duration_ms if max_await_duration_ms and max_await_duration_ms > 0 else None,
        )


@dataclass(frozen=True, slots=True)
class TopicSubscription:
    """The runtime's view of one subscription, whatever declared it.

    Rule order is ``rules`` as listed, then ``default_path`` (§2.1: ``routes.default`` wins over
    the v1 ``route``). ``metadata`` holds per-subscription options such as ``rawPayload``.
    ``bulk`` is set when ``bulkSubscribe.enabled`` is true (§2.4).
    """

    pubsubname: str
    topic: str
    rules: tuple[Route, ...] = ()
    default_path: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    dead_letter_topic: str | None = None
    type: SubscriptionType = SubscriptionType.PROGRAMMATIC
    name: str = ""
    bulk: BulkOptions | None = None

    @property
    def raw_payload(self) -> bool:
        return self.metadata.get("rawPayload", "").lower() == "true"

    def to_metadata_json(self) -> dict[str, Any]:
        """The ``subscriptions[]`` entry of ``GET /v1.0/metadata`` (§1.4)."""
        rules: list[dict[str, str]] = [{"match": r.match, "path": r.path} for r in self.rules]
        if self.default_path:
            rules.append({"path": self.default_path})
        return {
            "pubsubname": self.pubsubname,
            "topic": self.topic,
            "metadata": dict(self.metadata),
            "rules": rules,
            "deadLetterTopic": self.dead_letter_topic or "",
            "type": self.type.value,
        }


def _error_from_validation(exc: ValidationError, source: str) -> ResourceError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    return ResourceError(msg, source=source, field=loc)


def parse_resource(doc: Any, *, source: str = "") -> Component | Subscription | None:
    """Validate one YAML/JSON document as a Component or Subscription.

    Returns ``None`` for documents of other kinds (``Configuration``, ``Resiliency``...), which a
    resources folder may legitimately hold. Raises :class:`ResourceError` naming ``source`` and the
    field for a ``dapr.io`` resource the runtime would refuse.
    """
    if not isinstance(doc, dict):
        if doc is None:
            return None
        raise ResourceError("a resource must be a mapping", source=source)
    kind = doc.get("kind")
    api_version = str(doc.get("apiVersion", ""))
    if kind not in ("Component", "Subscription") or not api_version.startswith(f"{API_GROUP}/"):
        return None
    try:
        if kind == "Component":
            return Component.model_validate(doc)
        if api_version == "dapr.io/v1alpha1":
            return SubscriptionV1alpha1.model_validate(doc)
        return SubscriptionV2alpha1.model_validate(doc)
    except ValidationError as exc:
        raise _error_from_validation(exc, source) from None
