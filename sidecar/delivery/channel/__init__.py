"""The app channel: how the sidecar reaches the app, over HTTP (``http.py``) or gRPC
(``grpc.py``), chosen by ``--app-protocol`` (:func:`open_app_channel`); the types both share are
in ``types.py``, the HTTP bulk format in ``bulk_format.py``.
"""

from __future__ import annotations

from ...runtime.settings import SidecarSettings
from .http import AppChannel
from .types import Channel

__all__ = ["open_app_channel"]


def open_app_channel(settings: SidecarSettings) -> Channel:
    """The app channel ``settings.app_protocol`` asks for (``http`` or ``grpc``).

    Raises ``ValueError`` for another protocol or when ``settings.app_port`` is ``None``. The
    gRPC channel (and grpcio) is imported only when asked for.
    """
    if settings.app_protocol == "http":
        return AppChannel(settings)
    if settings.app_protocol == "grpc":
        from .grpc import GrpcAppChannel

        return GrpcAppChannel(settings)
    raise ValueError(f"unsupported app protocol {settings.app_protocol!r}: use http or grpc")
