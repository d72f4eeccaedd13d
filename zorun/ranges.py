"""Range checks declared with a schema's field: its bound and one-line reason sit next to its default.

``lr: float = positive(1e-3)`` is a dataclass field with default 1e-3 whose
metadata holds a :class:`Range`; :func:`check_ranges` walks a schema's fields
and raises :func:`zorun.errors.require`'s ConfigError for the first value out
of its range. So a bound is written once, where the field is, and the
estimators and samplers check their nodes from their schema alone (a check
that ties several fields together stays with its class).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from zorun.errors import require

RANGE = "range"  # the field-metadata key


@dataclass(frozen=True)
class Range:
    """lo < / <= value (< / <= hi), as the message states it."""

    lo: float
    hi: Optional[float] = None  # None: no upper bound
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # the message's tail: "(why)", or as written when it starts with ":" ("in (0, 1]: the share ...")

    def holds(self, value: Any) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        if self.hi is None:
            return above
        return above and (value < self.hi if self.hi_open else value <= self.hi)

    @property
    def rule(self) -> str:
        if self.hi is None:
            bound = f"{'>' if self.lo_open else '>='} {self.lo}"
        else:
            bound = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        tail = self.why if self.why.startswith(":") else f" ({self.why})" if self.why else ""
        return f"it must be {bound}{tail}"


def ranged(default: Any, bound: Range) -> Any:
    """A dataclass field with this default whose values must lie in bound."""
    return field(default=default, metadata={RANGE: bound})


def positive(default: float, why: str = "") -> Any:
    return ranged(default, Range(0, lo_open=True, why=why))


def at_least(lo: float, default: float, why: str = "") -> Any:
    return ranged(default, Range(lo, why=why))


def fraction(default: float) -> Any:
    """In [0, 1): a momentum or an Adam beta."""
    return ranged(default, Range(0, 1, hi_open=True))


def between(lo: float, hi: float, default: float, why: str = "", lo_open: bool = False) -> Any:
    return ranged(default, Range(lo, hi, lo_open=lo_open, why=why))


def check_ranges(schema: type, cfg: Mapping[str, Any], node: str) -> None:
    """Each ranged field of schema, in declaration order: `node.key=value is out of range: rule` when out."""
    for f in fields(schema):
        bound = f.metadata.get(RANGE)
        if bound is not None:
            require(bound.holds(cfg[f.name]), f"{node}.{f.name}", cfg[f.name], bound.rule)
