"""The sidecar's Dapr HTTP API (port 3500 by default).

- ``app.py``: the application factory, the one error middleware, API token and body limit;
- ``keys.py``: the application keys and ``RuntimeView`` the route modules share with ``app.py``;
- ``publish.py``, ``metadata.py``, ``health.py``: the routes.
"""
