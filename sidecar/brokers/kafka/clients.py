"""aiokafka connection settings shared by the producer and the consumer group of a component.

Maps Dapr's ``pubsub.kafka`` security fields (dapr-pubsub-contract.md §3.3) to aiokafka's:

=============================  ==================  =====================================
``authType``                   TLS (``KafkaMetadata.tls``)   ``security_protocol``
=============================  ==================  =====================================
``none``                       off                 ``PLAINTEXT``
``none``                       on                  ``SSL``
``password``                   off                 ``SASL_PLAINTEXT`` (PLAIN / SCRAM)
``password``                   on                  ``SASL_SSL``
``mtls``                       always              ``SSL`` with the client certificate
=============================  ==================  =====================================

Certificates arrive as PEM text in component metadata (``caCert``, ``clientCert``,
``clientKey``). The CA is loaded from memory (``cadata``); Python's ``ssl`` can only load a client
certificate chain from files, so those two are written to a private temporary folder, loaded, and
deleted at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Any

from ...resources.kafka import KafkaMetadata

__all__ = ["client_kwargs", "ssl_context"]


def ssl_context(meta: KafkaMetadata) -> ssl.SSLContext:
    """A client TLS context from ``meta``: CA from ``caCert`` (else the system store), client
    certificate from ``clientCert``/``clientKey`` when both are set, no verification when
    ``skipVerify``. Raises ``ssl.SSLError`` / ``ValueError`` for PEM text that does not load."""
    ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cadata=meta.ca_cert or None)
    if meta.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if meta.client_cert and meta.client_key:
        with tempfile.TemporaryDirectory(prefix="tidings-tls-") as folder:
            cert_path = os.path.join(folder, "client.crt")
            key_path = os.path.join(folder, "client.key")
            for path, text in ((cert_path, meta.client_cert), (key_path, meta.client_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
            ctx.load_cert_chain(certfile=cert_path, keyfile=key_path)
    return ctx


def client_kwargs(meta: KafkaMetadata) -> dict[str, Any]:
    """Keyword arguments common to ``AIOKafkaProducer`` and ``AIOKafkaConsumer`` for ``meta``:
    ``bootstrap_servers``, ``client_id``, ``security_protocol`` and, as needed,
    ``sasl_mechanism``/``sasl_plain_username``/``sasl_plain_password`` and ``ssl_context``."""
    tls = meta.tls
    kwargs: dict[str, Any] = {
        "bootstrap_servers": list(meta.brokers),
        "client_id": meta.client_id,
    }
    if meta.auth_type == "password":
        kwargs["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        kwargs["sasl_mechanism"] = meta.sasl_mechanism
        kwargs["sasl_plain_username"] = meta.sasl_username
        kwargs["sasl_plain_password"] = meta.sasl_password
    elif meta.auth_type == "mtls" or tls:
        kwargs["security_protocol"] = "SSL"
    else:
        kwargs["security_protocol"] = "PLAINTEXT"
    if kwargs["security_protocol"] in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(meta)
    return kwargs
