"""``GetMetadata``/``SetMetadata`` over gRPC: the same answer as ``GET /v1.0/metadata`` (§1.4).

The HTTP handler's JSON object (``inbound/http/metadata.metadata_body``) is translated field by
field into ``GetMetadataResponse``, so both APIs can never disagree.
"""

from __future__ import annotations

from typing import Any

from dapr.proto.runtime.v1 import metadata_pb2

__all__ = ["metadata_response"]

_SUBSCRIPTION_TYPES = {
    "DECLARATIVE": metadata_pb2.DECLARATIVE,
    "PROGRAMMATIC": metadata_pb2.PROGRAMMATIC,
    "STREAMING": metadata_pb2.STREAMING,
}


def metadata_response(body: dict[str, Any]) -> metadata_pb2.GetMetadataResponse:
    """``body`` (the ``GET /v1.0/metadata`` JSON object) as a ``GetMetadataResponse``."""
    connection = body["appConnectionProperties"]
    return metadata_pb2.GetMetadataResponse(
        id=body["id"],
        runtime_version=body["runtimeVersion"],
        enabled_features=body["enabledFeatures"],
        registered_components=[
            metadata_pb2.RegisteredComponents(
                name=c["name"], type=c["type"], version=c["version"], capabilities=c["capabilities"]
            )
            for c in body["components"]
        ],
        extended_metadata=body["extended"],
        subscriptions=[
            metadata_pb2.PubsubSubscription(
                pubsub_name=s["pubsubname"],
                topic=s["topic"],
                metadata=s["metadata"],
                rules=metadata_pb2.PubsubSubscriptionRules(
                    rules=[
                        metadata_pb2.PubsubSubscriptionRule(
                            match=r.get("match", ""), path=r["path"]
                        )
                        for r in s["rules"]
                    ]
                ),
                dead_letter_topic=s["deadLetterTopic"],
                type=_SUBSCRIPTION_TYPES.get(s["type"], metadata_pb2.UNKNOWN),
            )
            for s in body["subscriptions"]
        ],
        app_connection_properties=metadata_pb2.AppConnectionProperties(
            port=connection.get("port", 0),
            protocol=connection["protocol"],
            channel_address=connection["channelAddress"],
            max_concurrency=connection["maxConcurrency"],
        ),
    )
