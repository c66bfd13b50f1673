"""Where requests enter the sidecar: the Dapr HTTP API (``http/``) and gRPC API (``grpc/``).

Both decode a request and hand it on (publishes to ``publishing/``; streaming subscriptions to
the delivery engine) and turn a :class:`~tidings.sidecar.errors.DaprError` into their own answer.
"""
