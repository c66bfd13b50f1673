"""The sidecar's Dapr gRPC API (``dapr.proto.runtime.v1.Dapr``, port 50001 by default).

- ``server.py``: the servicer on grpcio's asyncio server, the ``dapr-api-token`` interceptor and
  the UNIMPLEMENTED answer for every rpc outside pub/sub;
- ``errors.py``: a :class:`~tidings.sidecar.errors.DaprError` as a gRPC status with
  ``google.rpc.ErrorInfo``/``ResourceInfo`` details;
- ``metadata.py``: ``GetMetadata`` from the same view as ``GET /v1.0/metadata``;
- ``streaming.py``: ``SubscribeTopicEventsAlpha1`` streams, delivered by the one delivery engine
  (``delivery.engine.Dispatcher``).

The generated ``*_pb2`` modules come from the Dapr Python SDK (PyPI ``dapr``); nothing is
vendored. Publishing goes through ``publishing.publisher.Publisher`` exactly like the HTTP API.
"""
