"""A consumed record to the app, and what happens to it then (ack, retry, dead-letter).

- ``engine.py``: the delivery engine and its one policy table; ``bulk.py``: bulk subscriptions;
- ``subscriptions.py``: programmatic and declarative subscriptions merged; ``routing.py``: CEL
  rules; ``retries.py``: backoff arithmetic; ``jsonfields.py``: Go-like JSON key lookup;
- ``channel/``: the app channel (HTTP or gRPC) the engine delivers through.
"""
