"""Typed reads of a component's ``spec.metadata`` values, shared by every component type.

Dapr decodes component metadata with mapstructure: names match case-insensitively and an empty
value counts as unset. :class:`MetadataValues` does that once, and reads durations (Go syntax or
bare milliseconds, :mod:`.durations`), integers and booleans with the same errors whatever the
component, each a :class:`ResourceError` naming ``spec.metadata.<name>``. Checks that belong to one
component (a minimum, a range) stay in that component's module (:mod:`.kafka`, :mod:`.redis`,
:mod:`.jetstream`).
"""

from __future__ import annotations

from typing import overload

from .durations import parse_duration_seconds
from .models import ResourceError

__all__ = ["MetadataValues", "parse_bool"]

_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("0", "f", "false", "no", "off", "")


def parse_bool(value: str, *, field: str, source: str) -> bool:
    """``value`` as a boolean, as Go's ``strconv.ParseBool`` plus ``yes``/``on``/``no``/``off``
    (and empty for false), in any case. Raises :class:`ResourceError` on ``field`` otherwise."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ResourceError(f"{value!r} is not a boolean", source=source, field=field)


class MetadataValues:
    """The metadata of one component: names in any case, empty values unset.

    ``values`` maps metadata names to rendered strings (secrets already resolved); ``source``
    names the component in errors. With ``strip``, values lose surrounding white space and a
    value of only white space is unset (JetStream's reading); without, values are kept as given.
    """

    __slots__ = ("_lower", "source")

    def __init__(self, values: dict[str, str], *, source: str = "", strip: bool = False) -> None:
        self.source = source
        self._lower = {k.lower(): (v.strip() if strip else v) for k, v in values.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``, or ``default`` when it is missing or empty."""
        return self._lower.get(name.lower()) or default

    @staticmethod
    def field(name: str) -> str:
        """The path errors name for metadata ``name``: ``spec.metadata.<name>``."""
        return f"spec.metadata.{name}"

    def error(self, name: str, message: str) -> ResourceError:
        """A :class:`ResourceError` about metadata ``name`` of this component (to raise)."""
        return ResourceError(message, source=self.source, field=self.field(name))

    def seconds(self, name: str, default: str) -> float:
        """Duration ``name`` in seconds (``default`` when unset), in Go syntax or bare
        milliseconds; may be negative. Raises :class:`ResourceError` when it does not parse."""
        try:
            return parse_duration_seconds(self.get(name) or default)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    @overload
    def integer(self, name: str, default: int) -> int: ...
    @overload
    def integer(self, name: str, default: None) -> int | None: ...

    def integer(self, name: str, default: int | None) -> int | None:
        """Integer ``name`` (``default`` when unset). Raises :class:`ResourceError` when it is
        not a base-10 integer."""
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise self.error(name, f"{raw!r} is not an integer") from None

    def boolean(self, name: str) -> bool:
        """Boolean ``name``, false when unset (:func:`parse_bool`)."""
        return parse_bool(self.get(name) or "false", field=self.field(name), source=self.source)
