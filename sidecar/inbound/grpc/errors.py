"""A :class:`DaprError` as the gRPC status Dapr answers (dapr-pubsub-contract.md §1.2).

Dapr's errors carry an HTTP status and a gRPC code side by side (dapr/kit ``errors``); over gRPC
the status message is the error's message and the ``grpc-status-details-bin`` trailer holds a
``google.rpc.Status`` with ``google.rpc.ErrorInfo`` (``reason`` = the ErrorInfo reason such as
``DAPR_PUBSUB_NOT_FOUND``, ``domain`` ``dapr.io``, the error's metadata) and, when a pubsub is
named, ``google.rpc.ResourceInfo``. The Dapr SDKs read these (Python: ``DaprGrpcError``).

The gRPC code follows the error's ``reason`` (Dapr's pairing), else its HTTP status. A client
mistake (a 4xx status) is never ``INTERNAL``: where Dapr pairs a reason with ``INTERNAL``
(``DAPR_PUBSUB_PUBLISH_MESSAGE``) but the HTTP API answers 400/413 (a topic name or
``partitionNumber`` the broker can never take, a message over the size limit; README "Where we
differ from Dapr on purpose"), the code follows the HTTP status: ``INVALID_ARGUMENT``,
``RESOURCE_EXHAUSTED``. ``INTERNAL`` stays for broker failures (500).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ...errors import DaprError

__all__ = ["grpc_code", "grpc_status"]

# Dapr's gRPC code per ErrorInfo reason (dapr/dapr pkg/api/errors/pubsub.go, issue 7).
_BY_REASON: dict[str, grpc.StatusCode] = {
    "DAPR_PUBSUB_NOT_CONFIGURED": grpc.StatusCode.FAILED_PRECONDITION,
    "DAPR_PUBSUB_NAME_EMPTY": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_NOT_FOUND": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_TOPIC_NAME_EMPTY": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_METADATA_DESERIALIZATION": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_CLOUD_EVENT_CREATION": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_MARSHAL_ENVELOPE": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_MARSHAL_EVENTS": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_UNMARSHAL_EVENTS": grpc.StatusCode.INVALID_ARGUMENT,
    "DAPR_PUBSUB_FORBIDDEN": grpc.StatusCode.PERMISSION_DENIED,
    "DAPR_PUBSUB_TEST_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "DAPR_PUBSUB_PUBLISH_MESSAGE": grpc.StatusCode.INTERNAL,
}

_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(error: DaprError) -> grpc.StatusCode:
    """The gRPC code Dapr answers for ``error``: by reason, else by HTTP status (5xx INTERNAL);
    a 4xx error whose reason Dapr pairs with ``INTERNAL`` by its HTTP status (issue 5)."""
    if error.status == 413:  # a body over --max-body-size, whatever the reason says
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    code = _BY_REASON.get(error.reason)
    if code is not None and not (code == grpc.StatusCode.INTERNAL and error.status < 500):
        return code
    return _BY_HTTP.get(
        error.status, grpc.StatusCode.INTERNAL if error.status >= 500 else grpc.StatusCode.UNKNOWN
    )


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def grpc_status(error: DaprError) -> grpc.Status:
    """``error`` as a ``grpc.Status`` for ``context.abort_with_status``: code, message and the
    ErrorInfo/ResourceInfo details of ``DaprError.body()``."""
    code = grpc_code(error)
    details = []
    if error.reason:
        details.append(
            _packed(
                error_details_pb2.ErrorInfo(
                    reason=error.reason, domain="dapr.io", metadata=dict(error.metadata)
                )
            )
        )
    if error.resource is not None:
        details.append(
            _packed(
                error_details_pb2.ResourceInfo(
                    resource_type="pubsub",
                    resource_name=error.resource,
                    owner="",
                    description=error.message,
                )
            )
        )
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)
