"""Client TLS contexts from PEM text in component metadata, without writing a file.

Dapr components carry certificates as PEM text (``caCert``, ``clientCert``, ``clientKey``;
components-contrib ``common/component/kafka/metadata.go``). Python's ``ssl`` loads a CA from
memory (``cadata``) but a client certificate and key only from paths, and the injected sidecar
runs on a read-only root with nothing writable. So the certificate and key are put in anonymous
memory files (``memfd_create``) and loaded through ``/proc/self/fd``; only where that is missing
(not Linux) does a private temporary folder stand in, deleted at once.

Used where a component is checked (``kafka.py``: bad PEM text is refused at load time, naming the
field, in the sidecar and in the operator's status alike) and where brokers connect
(``brokers/kafka/clients.py``).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator

__all__ = ["TlsMaterialError", "client_context"]


class TlsMaterialError(ValueError):
    """PEM text that does not load. ``field`` names the metadata it came from."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@contextlib.contextmanager
def _pem_paths(cert_pem: str, key_pem: str) -> Iterator[tuple[str, str]]:
    """Paths the two PEM texts can be read from, for as long as the context lasts."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for name, text in (("client-cert", cert_pem), ("client-key", key_pem)):
                fd = memfd_create(f"tidings-{name}", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, text.encode("utf-8"))
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="tidings-tls-") as folder:  # pragma: no cover
        paths = []
        for name, text in (("client.crt", cert_pem), ("client.key", key_pem)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        yield paths[0], paths[1]


def client_context(
    *,
    ca_pem: str | None = None,
    cert_pem: str | None = None,
    key_pem: str | None = None,
    skip_verify: bool = False,
    ca_field: str = "caCert",
    cert_field: str = "clientCert",
    extend_system: bool = False,
) -> ssl.SSLContext:
    """A TLS client context (TLS 1.2 or newer, hostname checked).

    Trust: ``ca_pem`` alone when given (as Dapr's Kafka component: its ``caCert`` replaces the
    system store), plus the system store with ``extend_system``; the system store otherwise.
    ``cert_pem``/``key_pem`` (both or neither) are the client certificate. ``skip_verify``
    turns verification off (neither the chain nor the name is checked). Raises
    :class:`TlsMaterialError` naming ``ca_field`` or ``cert_field`` for text that does not load.
    """
    try:
        if ca_pem and extend_system:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.load_verify_locations(cadata=ca_pem)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem or None)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsMaterialError(ca_field, f"{ca_field} is not a PEM certificate: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_pem and key_pem:
        try:
            with _pem_paths(cert_pem, key_pem) as (cert_path, key_path):
                ctx.load_cert_chain(certfile=cert_path, keyfile=key_path)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise TlsMaterialError(
                cert_field,
                f"{cert_field} and its key do not load as a PEM certificate and private key "
                f"that belong together: {exc}",
            ) from None
    return ctx
