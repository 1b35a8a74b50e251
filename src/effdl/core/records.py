"""Records a technique leaves on the model it returns (sensitivity curves, lottery history, ...).

A plain JSON-able dict in the module's ``__dict__`` (not a parameter or buffer, so it is never saved
with the weights and survives ``copy.deepcopy``). `optimize` copies it into the candidate's results so
the report can draw it.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from .compressed import float_reference

_ATTR = "_effdl_records"


def attach(model: nn.Module, key: str, value: Any) -> None:
    model.__dict__.setdefault(_ATTR, {})[key] = value


def records(model: nn.Module) -> dict[str, Any]:
    """Everything attached to ``model`` and, for a CompressedModel, to its float reference (the
    records of the steps before it); the model's own win on a clash."""
    out = dict(float_reference(model).__dict__.get(_ATTR, {}))
    out.update(model.__dict__.get(_ATTR, {}))
    return out
