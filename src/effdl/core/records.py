"""Records a technique leaves on the model it returns (sensitivity curves, lottery history, ...).

Each kind of record is a `Record` subclass (a frozen pydantic model) with a unique ``key``, defined
next to the technique that produces it; defining the class registers it. ``attach(model, record)``
keeps it in the module's ``__dict__`` (not a parameter or buffer, so it is never saved with the
weights and survives ``copy.deepcopy``). `optimize` copies ``records(model)`` into the candidate's
results, results.json holds each record's ``model_dump`` under its key, and ``parse_records`` rebuilds
the typed records from it (``Results.load`` calls it); the report draws each class with the section
registered for it (``effdl.report.registry``).

A record whose JSON is a single value (a dict of layers, a number) names that field in ``root``:
it dumps as the bare value and ``from_json`` wraps it back, so results.json keeps the shape it had
when records were plain dicts. Optional fields left at their None default are left out of the dump
(the producers wrote those keys only when they applied).

An unknown key in results.json (a record kind from a newer effdl, or from a plugin that is not
imported) is kept as an `UnknownRecord` holding the JSON as it was, with a logged warning: the file
still loads, saves back unchanged, and the report draws nothing for it.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import pydantic
import torch.nn as nn

from .compressed import float_reference
from .errors import ConfigError

__all__ = ["Part", "Record", "UnknownRecord", "attach", "dump_records", "parse_records", "record_class",
           "record_classes", "records"]

log = logging.getLogger(__name__)

_ATTR = "_effdl_records"
_CLASSES: dict[str, type["Record"]] = {}


class Part(pydantic.BaseModel):
    """A typed piece of a record (one layer's entry, one round, ...): frozen, unknown keys refused."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    #: the field that is the whole JSON value of a record (None: the fields are the JSON object's keys)
    root: ClassVar[str | None] = None

    @pydantic.model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        data = handler(self)
        if self.root is not None:
            return data[self.root]
        fields = type(self).model_fields
        # an optional field at its None default was absent from the producers' dicts: keep it absent
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].default is not None}


class Record(Part):
    """Base of every record kind; a subclass sets ``key`` (its name in ``records(model)`` and in
    results.json) and is registered by being defined. A subclass without its own ``key`` is an
    abstract base (e.g. the low-rank records' common fields)."""

    key: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        key = cls.__dict__.get("key")
        if key is None:
            return
        if not isinstance(key, str) or not key:
            raise ConfigError(f"record class {cls.__qualname__}: key must be a non-empty string, got {key!r}")
        old = _CLASSES.get(key)
        # the same class defined again (a module reloaded) replaces itself; another class may not take the key
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"record key {key!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
                              f"{old.__module__}.{old.__qualname__}: give the new record class another key")
        _CLASSES[key] = cls

    @classmethod
    def from_json(cls, value: Any) -> "Record":
        """The record from its results.json value (the bare value for a ``root`` record)."""
        return cls.model_validate({cls.root: value} if cls.root is not None else value)


class UnknownRecord(Record):
    """A record whose key this effdl does not know, kept as its JSON value so the file saves back unchanged."""

    root = "data"
    data: Any


def record_classes() -> dict[str, type[Record]]:
    """Every registered record class by key (the technique modules register theirs on import)."""
    _import_techniques()
    return dict(_CLASSES)


def record_class(key: str) -> type[Record]:
    cls = record_classes().get(key)
    if cls is None:
        raise ConfigError(f"no record class has key {key!r} (known: {', '.join(sorted(_CLASSES))}): define a Record "
                          f"subclass with key = {key!r} in the technique's module")
    return cls


def _import_techniques() -> None:
    # Importing the families defines their record classes; lazy so `core` has no upward imports.
    from .. import compress, learn  # noqa: F401


def attach(model: nn.Module, record: Record) -> None:
    """Leave ``record`` on ``model`` under its class's key (replacing an earlier one of that kind)."""
    key = getattr(type(record), "key", None)
    # only registered classes: their key is what parse_records reads the JSON back with
    if not isinstance(record, Record) or _CLASSES.get(key) is not type(record):
        raise ConfigError(f"attach takes a typed record (an instance of a registered subclass of "
                          f"effdl.core.records.Record, with its own key), got {type(record).__name__}: define a Record "
                          "class with a key for the data and attach an instance of it")
    model.__dict__.setdefault(_ATTR, {})[key] = record


def records(model: nn.Module) -> dict[str, Record]:
    """Everything attached to ``model`` and, for a CompressedModel, to its float reference (the
    records of the steps before it); the model's own win on a clash."""
    out = dict(float_reference(model).__dict__.get(_ATTR, {}))
    out.update(model.__dict__.get(_ATTR, {}))
    return out


def dump_records(recs: dict[str, Record]) -> dict[str, Any]:
    """The records as results.json holds them (plain JSON values by key)."""
    return {k: r.model_dump(mode="json") for k, r in recs.items()}


def parse_records(data: dict[str, Any]) -> dict[str, Record]:
    """Typed records from their results.json values by key; typed records pass through.

    A key no registered class has becomes an `UnknownRecord` (logged), so results from a newer
    effdl still load. A known key with a malformed value raises pydantic's ValidationError.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"records must be a JSON object of record key -> value, got {type(data).__name__}")
    classes = record_classes()
    out: dict[str, Record] = {}
    for key, value in data.items():
        if isinstance(value, Record):
            out[key] = value
            continue
        cls = classes.get(key)
        if cls is None:
            log.warning("record %r is of a kind this effdl does not know (written by a newer effdl, or by a plugin "
                        "that is not imported): kept as it is and not drawn", key)
            out[key] = UnknownRecord(data=value)
        else:
            out[key] = cls.from_json(value)
    return out
