"""Field lookup in JSON objects the app sends, as Dapr (Go's ``encoding/json``) decodes them.

Go matches a JSON object's keys to struct fields case-insensitively, an exact match first, so
``{"Status": "RETRY"}`` and ``{"pubsubName": ...}`` mean to Dapr what ``status`` and ``pubsubname``
do. Used for the app's delivery answers (``delivery/channel/http.py``,
``delivery/channel/bulk_format.py``) and its ``/dapr/subscribe`` list (``subscriptions.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_field"]


def json_field(obj: Mapping[str, Any], key: str) -> Any:
    """The value of ``key`` in ``obj``: the exact key, else the first key equal to it ignoring
    case, else ``None``. Non-string keys never match. Pure; never raises."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None
