"""Dapr-style API errors: one exception type carrying status, ``errorCode``, reason and message.

The body is Dapr's ``{"errorCode", "message", "details": [ErrorInfo, ResourceInfo?]}``
(dapr-pubsub-contract.md §1.2, dapr/kit ``errors.JSONErrorValue``). Handlers raise
:class:`DaprError`; the one error middleware in ``inbound/http/app.py`` turns it into a response, so
no handler builds error bodies itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DaprError"]


@dataclass(frozen=True, slots=True)
class DaprError(Exception):
    """An error answered to the caller.

    ``status`` is the HTTP status; ``error_code`` Dapr's ``errorCode`` (``ERR_PUBSUB_NOT_FOUND``);
    ``reason`` the ``google.rpc.ErrorInfo`` reason (``DAPR_PUBSUB_NOT_FOUND``) or ``""`` for none;
    ``resource`` the pubsub name for a ``ResourceInfo`` detail, or ``None``.
    """

    status: int
    error_code: str
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    resource: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.error_code}: {self.message}"

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.reason:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "dapr.io",
                    "metadata": dict(self.metadata),
                }
            )
        if self.resource is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                    "resource_type": "pubsub",
                    "resource_name": self.resource,
                    "owner": "",
                    "description": self.message,
                }
            )
        body: dict[str, Any] = {"errorCode": self.error_code, "message": self.message}
        if details:
            body["details"] = details
        return body
