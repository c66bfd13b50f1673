"""Dapr's Component and Subscription resources: models, per-type checks and the folder loader.

The operator uses this package to validate resources exactly as the sidecar loads them.
"""

from .kafka import KafkaMetadata, RetryPolicy, parse_kafka_metadata
from .loading import (
    IN_MEMORY_TYPE,
    SUPPORTED_TYPES,
    LoadedComponent,
    Resources,
    check_component,
    load_resources,
    resolve_metadata,
)
from .models import (
    Component,
    ResourceError,
    Route,
    Subscription,
    SubscriptionType,
    TopicSubscription,
    parse_resource,
)

__all__ = [
    "IN_MEMORY_TYPE",
    "SUPPORTED_TYPES",
    "Component",
    "KafkaMetadata",
    "LoadedComponent",
    "ResourceError",
    "Resources",
    "RetryPolicy",
    "Route",
    "Subscription",
    "SubscriptionType",
    "TopicSubscription",
    "check_component",
    "load_resources",
    "parse_kafka_metadata",
    "parse_resource",
    "resolve_metadata",
]
