"""tidings operator: dapr.io CRDs' control plane, sidecar injection and per-app broker config.

Importing the package registers the operator's handlers on kopf's default registry, with
settings from the ``TIDINGS_*`` environment, so that ``kopf run -m tidings.operator`` works; the
``tidings operator`` command (``main.main``) uses its own registry and flags instead. The
modules: ``annotations`` → ``sidecar_patch`` → ``injection`` (webhook); ``validation``,
``appconfig``, ``handlers``, ``leadership`` (control loop); ``settings``, ``main`` (wiring).
"""

from __future__ import annotations


def _register_default() -> None:
    import kopf

    from .main import register_operator
    from .settings import parse_settings

    register_operator(kopf.get_default_registry(), parse_settings([]))


_register_default()
