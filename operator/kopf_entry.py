"""``kopf run -m tidings.operator.kopf_entry``: the operator's handlers on kopf's default registry.

Importing this module registers them, with settings from the ``TIDINGS_*`` environment; the
``tidings operator`` command (``main.main``) uses its own registry and flags instead.
``tidings.operator`` itself is an implicit namespace package (no ``__init__.py``), so that the
checkout's ``operator/`` folder never shadows the standard library's ``operator`` module. The
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
