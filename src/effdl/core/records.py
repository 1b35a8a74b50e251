"""Records a technique leaves on the model it returns (sensitivity curves, lottery history, ...).

A plain JSON-able dict in the module's ``__dict__`` (not a parameter or buffer, so it is never saved
with the weights and survives ``copy.deepcopy``). `optimize` copies it into the candidate's results so
the report can draw it.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

_ATTR = "_effdl_records"


def attach(model: nn.Module, key: str, value: Any) -> None:
    model.__dict__.setdefault(_ATTR, {})[key] = value


def records(model: nn.Module) -> dict[str, Any]:
    """Everything attached to ``model`` (or to a quantized model's float source)."""
    out = dict(getattr(model, "float_model", model).__dict__.get(_ATTR, {}))
    out.update(model.__dict__.get(_ATTR, {}))
    return out
