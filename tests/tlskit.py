"""Certificates made by the tests: a CA, a server certificate for ``localhost``/``127.0.0.1``,
a client certificate, and a second, unrelated CA (the "wrong CA").

Made with the ``openssl`` command (on every Debian machine; no Python dependency), EC P-256
keys, valid for two days. Nothing here is a stand-in: servers and clients in the tests do real
TLS handshakes with these.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files (certificates and PKCS#8 keys)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    """A CA that signed nothing here: trusting it alone must fail every handshake."""

    def text(self, name: str) -> str:
        """The PEM text of the file ``name`` (an attribute name, e.g. ``"ca_cert"``)."""
        path: Path = getattr(self, name)
        return path.read_text()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=tidings test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(
    folder: Path, name: str, ca: tuple[Path, Path], *, subject: str, extensions: str
) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", subject,
    )  # fmt: skip
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server and a client certificate signed by it, and another CA to
    ``folder``; keys are readable by their owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other, _ = _ca(folder, "other-ca")
    server = _leaf(
        folder,
        "server",
        ca,
        subject="/CN=localhost",
        extensions="subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    client = _leaf(
        folder,
        "client",
        ca,
        subject="/CN=tidings-client",
        extensions="extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        ca_cert=ca[0],
        ca_key=ca[1],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca_cert=other,
    )
