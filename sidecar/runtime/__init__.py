"""One running sidecar: its settings, start and stop, and what it reports.

- ``settings.py``: flags and environment; ``runner.py``: start order, hot reload, shutdown;
- ``logs.py``, ``metrics.py``, ``tracing.py``: structured logs, Prometheus metrics, trace context;
- ``tasks.py``: stopping background tasks in bounded time.
"""
