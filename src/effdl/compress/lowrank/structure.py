"""Pickle-free save/reload of decomposed models: the layer shapes of ``prune.structure_of`` plus,
for every factorized layer, the ``spec`` its module is rebuilt from.

``rebuild(fresh, structure)`` first swaps each recorded layer of the fresh (original) architecture
for an empty module built from its spec, then lets ``prune.rebuild`` give every remaining layer its
recorded shape; ``load_state_dict`` of the saved tensors then restores the model exactly. Works for
models that were also channel-pruned (the two records compose).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ...core.errors import ArtifactError
from ..prune.surgery import rebuild as rebuild_shapes
from ..prune.surgery import structure_of as shapes_of
from .modules import from_spec, spec_of

__all__ = ["rebuild", "structure_of"]


def structure_of(model: nn.Module) -> dict[str, Any]:
    """``prune.structure_of(model)`` with a ``lowrank`` entry {module name: spec} (empty when none)."""
    out = shapes_of(model)
    out["lowrank"] = {name: spec for name, m in model.named_modules() if (spec := spec_of(m)) is not None}
    return out


def rebuild(fresh_model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """``fresh_model`` (the original architecture) reshaped to ``structure``, ready for load_state_dict."""
    if not isinstance(structure, dict):
        raise ArtifactError(f"not a structure record: {str(structure)[:80]!r}")
    for name, spec in structure.get("lowrank", {}).items():
        try:
            fresh_model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(f"structure factorizes layer {name!r}, which the fresh model lacks: rebuild "
                                "from the architecture the model was decomposed from") from None
        fresh_model.set_submodule(name, from_spec(spec))
    return rebuild_shapes(fresh_model, structure)
