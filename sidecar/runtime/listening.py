"""Where the sidecar's servers listen: the API on loopback, health on every interface.

daprd binds its HTTP and gRPC APIs to ``--dapr-listen-addresses`` (default ``[::1],127.0.0.1``,
dapr/dapr ``pkg/runtime/config.go``) and serves the probes on a separate public port
(``--dapr-public-port``, 3501) on every interface, so the kubelet reaches the health endpoints
while other pods cannot reach the API (docs.dapr.io/operations/security/api-token/ and
docs.dapr.io/reference/arguments-annotations-overview/). This module holds the two rules the
runner needs for that:

- :func:`usable_addresses`: an address this host does not have (``::1`` in a pod without IPv6)
  is dropped with a warning naming it, as daprd skips a listener it cannot open; a host with none
  of them is an error. Any other bind failure (a port in use) stays fatal, so the API never ends
  up on half of its addresses while another process holds the rest.
- :func:`bind_sites`: one aiohttp ``TCPSite`` per address on one port; port 0 takes a free port
  on the first address and the same port on the others.

Neighbours: ``runtime/runner.py`` (start order), ``inbound/http/app.py`` (the applications),
``inbound/grpc/server.py`` (the gRPC listeners).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence

from aiohttp import web

__all__ = ["ListenError", "bind_sites", "host_port", "usable_addresses"]

log = logging.getLogger(__name__)

# The host lacks the address or its family: skip it. Everything else (EADDRINUSE, EACCES) is fatal.
_ABSENT = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


class ListenError(OSError):
    """No listen address can be used on this host (every one is absent)."""


def _absent(address: str) -> OSError | None:
    """Why ``address`` cannot be bound on this host (it is not one of its addresses, or the
    host has no IPv6), or ``None`` when it can be. Binds port 0 for a moment; never raises."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        if exc.errno in _ABSENT:
            return exc
    return None


def usable_addresses(addresses: Sequence[str], *, app_id: str = "") -> tuple[str, ...]:
    """``addresses`` without those this host does not have, each dropped one logged as a
    warning. Raises :class:`ListenError` when none is left."""
    kept: list[str] = []
    for address in addresses:
        problem = _absent(address)
        if problem is None:
            kept.append(address)
        else:
            log.warning(
                "not listening on %s: this host does not have that address (%s)",
                address,
                problem.strerror or problem,
                extra={"app_id": app_id},
            )
    if not kept:
        raise ListenError(
            errno.EADDRNOTAVAIL,
            f"none of the listen addresses {', '.join(addresses)} exists on this host",
        )
    return tuple(kept)


def host_port(address: str, port: int) -> str:
    """``address:port`` with an IPv6 address in brackets (``[::1]:3500``)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def bind_sites(runner: web.AppRunner, hosts: Sequence[str | None], port: int) -> int:
    """Serve ``runner`` on each of ``hosts`` (``None``: every interface, IPv4 and IPv6) at
    ``port``; returns the bound port. With ``port`` 0 the first host picks a free port and
    the others take the same one. Raises ``OSError`` when a host cannot be bound; sites already
    started stay with ``runner`` (its ``cleanup()`` closes them)."""
    bound = port
    for host in hosts:
        site = web.TCPSite(runner, host, bound, reuse_address=True)
        await site.start()
        if bound == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            bound = sockets[0].getsockname()[1] if sockets else 0
    return bound
