"""Which part of which report section draws each kind of record.

A section module registers, for each record class it draws, the function that draws that record's
part of a `Section` (``@draws(SensitivityRecord, SPARSITY)``); ``section_html`` assembles a section
from its record-independent parts and the parts of the record classes some candidate carries, in
registration order. A record class without a drawer (e.g. the lottery history) is kept in
results.json and not drawn; a subclass is drawn by its closest registered base (every lowrank.*
record by the LowRankRecord drawer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from ..core.errors import ConfigError
from ..core.records import Record
from ..pipeline.results import Candidate
from .plots import figure_html
from .view import View, is_ok

R = TypeVar("R", bound=Record)
Draw = Callable[[View], str]  # the part's HTML, "" when there is nothing to draw


@dataclass(frozen=True, eq=False)
class Section:
    title: str
    note: str = ""  # HTML under the title, shown when the section is drawn
    parts: tuple[Draw, ...] = ()  # drawn from the candidates, not from records; before the record parts


_DRAWERS: dict[type[Record], tuple[Section, Draw]] = {}


def draws(record: type[Record], section: Section) -> Callable[[Draw], Draw]:
    """Register the decorated ``fn(view) -> html`` as the drawer of ``record``'s part of ``section``."""
    if not (isinstance(record, type) and issubclass(record, Record)):
        raise ConfigError(f"draws takes a Record subclass, got {record!r}")

    def register(fn: Draw) -> Draw:
        old = _DRAWERS.get(record)
        if old is not None and (old[1].__module__, old[1].__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"{record.__name__} is already drawn by {old[1].__module__}.{old[1].__qualname__}: "
                              "one drawer per record class")
        _DRAWERS[record] = (section, fn)
        return fn

    return register


def drawer(record: type[Record]) -> tuple[Section, Draw] | None:
    """The section and drawer of ``record``'s closest registered class (itself or a base)."""
    return next((_DRAWERS[k] for k in record.__mro__ if k in _DRAWERS), None)


def carriers(view: View, record: type[R], ok_only: bool = True) -> list[tuple[Candidate, R]]:
    """(candidate, record) of each candidate carrying a ``record`` (or subclass), in the view's order;
    only measured ones unless ``ok_only`` is False. A candidate with several yields each."""
    return [(c, r) for c in view.candidates if is_ok(c) or not ok_only
            for r in c.records.values() if isinstance(r, record)]


def plot(fig, div_id: str) -> str:
    """A figure as the report's plot div; "" for no figure."""
    return f'<div class="plot">{figure_html(fig, div_id)}</div>' if fig is not None else ""


def section_html(view: View, section: Section) -> str:
    """The section: its own parts, then a part per record class drawn in it that a candidate carries;
    "" when every part is empty."""
    present = {type(r) for c in view.candidates for r in c.records.values()}
    drawn = {d[1] for t in present if (d := drawer(t)) is not None and d[0] is section}
    ordered = dict.fromkeys(fn for _, fn in _DRAWERS.values() if fn in drawn)  # registration order, each once
    body = "".join(p(view) for p in section.parts) + "".join(fn(view) for fn in ordered)
    return f"<section><h2>{section.title}</h2>{section.note}{body}</section>" if body else ""
