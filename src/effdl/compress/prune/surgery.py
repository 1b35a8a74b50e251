"""Structural surgery: the dependency graph, its checks, and pickle-free save/rebuild of pruned shapes.

Torch-Pruning's DependencyGraph finds which layers must shrink together (BatchNorm, residual adds,
concatenations, depthwise pairs, flatten into Linear). This module wraps it with the checks that
turn its silent failure modes into named errors, and records a pruned model's shapes as plain data
(``structure_of``) so that ``rebuild`` + ``load_state_dict`` restore it exactly without pickle.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...core.errors import ArtifactError, UnsupportedModuleError

STRUCTURE_FORMAT = 1
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
# Leaf types whose parameters Torch-Pruning knows how to slice; any other parameterized leaf is
# a custom module whose channel semantics the graph cannot see.
KNOWN_LEAVES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                nn.GroupNorm, nn.PReLU, nn.Embedding)
_SHAPE_ATTRS = {  # module type -> the attributes that change with pruning
    "conv": ("in_channels", "out_channels", "groups"),
    "linear": ("in_features", "out_features"),
    "bn": ("num_features",),
}
# Plain int attributes that count attention heads (effdl's zoo encoder; Hugging Face BERT): they
# change with prune.heads and the forward reads them, so the structure records them too.
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "all_head_size")


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn"
    return None


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Names of modules that share a parameter object (tied weights), one list per shared tensor."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return [names for names in owners.values() if len(names) > 1]


def check_supported(model: nn.Module, protected: set[str]) -> None:
    """Refuse what the graph analysis would get silently wrong (before touching anything)."""
    for names in tied_parameters(model):
        raise UnsupportedModuleError(
            f"modules {names} share one weight tensor (tied weights); structured surgery replaces "
            "each module's weight and would untie them. Fix: untie them (clone the weight) before "
            "prune.channels, or apply prune.magnitude, which keeps ties."
        )
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not name:  # the root holds parameters outside any layer: there is nothing to protect
            free = [n for n, _ in m.named_parameters(recurse=False)]
            raise UnsupportedModuleError(
                f"the model ({type(m).__name__}) holds parameters of its own outside any layer ({', '.join(free)}), "
                "which the dependency analysis cannot follow, and the model itself cannot be protected. Fix: move "
                "them into a submodule and protect that, or use prune.magnitude (unstructured), which needs no "
                "dependency analysis.")
        if own and not isinstance(m, KNOWN_LEAVES) and not _under(name, protected):
            raise UnsupportedModuleError(
                f"module {name!r} ({type(m).__name__}) holds its own parameters and is not a layer "
                "type the dependency analysis understands, so its channels cannot be kept consistent. "
                f"Fix: protect it (protect=[{name!r}]) or build it from standard layers."
            )


def _under(name: str, protected: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in protected)


def build_graph(model: nn.Module, example: torch.Tensor):
    """Torch-Pruning DependencyGraph of ``model`` traced on a real ``example`` batch."""
    import torch_pruning as tp

    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # tracing runs the user's forward: any failure is their model's
        raise UnsupportedModuleError(
            f"tracing the model for its channel dependencies failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Fix: make forward traceable by autograd."
        ) from None
    finally:
        model.train(was)
    return dg


def check_traced(model: nn.Module, dg, protected: set[str]) -> None:
    """Every weighted layer must appear in the traced graph; one that does not was skipped by
    data-dependent control flow on the example and would keep stale input channels."""
    for name, m in model.named_modules():
        if isinstance(m, WEIGHTED) and m not in dg.module2node and not _under(name, protected):
            raise UnsupportedModuleError(
                f"module {name!r} ({type(m).__name__}) was not reached when tracing the model on a real "
                "example (data-dependent Python control flow?), so its input channels cannot be fixed. "
                f"Fix: protect the module that contains it (protect=[{name.rpartition('.')[0] or name!r}]) "
                "or make forward take the same path for every input."
            )


def is_out_pruning(dg, handler) -> bool:
    return dg.is_out_channel_pruning_fn(handler)


def prunable_groups(model: nn.Module, dg, protected: set[str]) -> list:
    """Groups rooted at Conv/Linear output units in which no protected module loses outputs, and
    which reach no custom (unknown) module at all."""
    names = {m: n for n, m in model.named_modules()}
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    out = []
    for group in dg.get_all_groups(root_module_types=WEIGHTED):
        ok = True
        for dep, _ in group:
            mod = dep.target.module
            if isinstance(mod, nn.Parameter):  # a free parameter sliced along the group's channels
                mod = owners.get(id(mod))
            name = names.get(mod)
            if name is None:
                continue  # a functional op (add, cat, flatten): no parameters of its own
            if _under(name, protected) and (is_out_pruning(dg, dep.handler) or not isinstance(mod, KNOWN_LEAVES)):
                ok = False
                break
        if ok:
            out.append(group)
    return out


def group_period(group) -> int:
    """lcm of the group counts of the grouped (not depthwise) convs whose channels the group cuts."""
    period = 1
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels:
            if list(item.idxs) != list(item.root_idxs):
                raise UnsupportedModuleError(
                    f"grouped conv {m} is reached through a channel re-mapping (concat/split) that structured "
                    "pruning cannot keep per-group consistent. Fix: protect it with protect=[...]")
            period = math.lcm(period, m.groups)
    n = len(group[0].idxs)
    if n % period:
        raise UnsupportedModuleError(f"a channel group of {n} units cannot be split evenly over {period} conv groups")
    return period


def root_name(model: nn.Module, group) -> str:
    names = {m: n for n, m in model.named_modules()}
    return names[group[0].dep.target.module]


def prune_group(dg, group, idxs: list[int]) -> None:
    """Physically remove the group's units ``idxs`` (root indices) from every coupled layer."""
    root = group[0].dep.target.module
    dg.get_pruning_group(root, group[0].dep.handler, sorted(idxs)).prune(record_history=False)


def strip_graph_state(model: nn.Module) -> nn.Module:
    """A plain module: no hooks left behind by tracing."""
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            hooks.clear()
    return model


# -- pickle-free persistence of the pruned shapes -----------------------------------------------
def structure_of(model: nn.Module) -> dict[str, Any]:
    """Per-module shapes of Conv/Linear/BN layers, head counts of attention modules and the names of
    Identity modules (blocks removed by prune.layers), as JSON-ready data."""
    layers: dict[str, dict[str, Any]] = {}
    identities = []
    heads: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is not None:
            layers[name] = {"type": type(m).__name__, **{a: int(getattr(m, a)) for a in _SHAPE_ATTRS[kind]}}
        elif isinstance(m, nn.Identity) and name:
            identities.append(name)
        counts = {a: int(getattr(m, a)) for a in _HEAD_ATTRS if isinstance(getattr(m, a, None), int)}
        if counts:
            heads[name] = counts
    return {"format": STRUCTURE_FORMAT, "layers": layers, "identities": identities, "heads": heads}


def _reshape(m: nn.Module, spec: dict[str, Any], name: str) -> None:
    kind = _kind(m)
    if type(m).__name__ != spec.get("type"):
        raise ArtifactError(f"structure names {name!r} a {spec.get('type')} but the fresh model has a "
                            f"{type(m).__name__} there: rebuild from the architecture the model was pruned from")
    for a in _SHAPE_ATTRS[kind]:
        setattr(m, a, int(spec[a]))

    def fresh(shape) -> nn.Parameter:
        return nn.Parameter(torch.empty(shape))  # filled by load_state_dict

    if kind == "conv":
        m.weight = fresh((m.out_channels, m.in_channels // m.groups, *m.kernel_size))
        if m.bias is not None:
            m.bias = fresh((m.out_channels,))
    elif kind == "linear":
        m.weight = fresh((m.out_features, m.in_features))
        if m.bias is not None:
            m.bias = fresh((m.out_features,))
    else:
        n = m.num_features
        if m.affine:
            m.weight, m.bias = fresh((n,)), fresh((n,))
        if m.track_running_stats:
            m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)


def rebuild(fresh_model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Give ``fresh_model`` (the original architecture, e.g. a new zoo build) the pruned shapes of
    ``structure``; then ``load_state_dict`` of the pruned weights restores the pruned model exactly."""
    if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
        raise ArtifactError(f"not a structure record of format {STRUCTURE_FORMAT}: {str(structure)[:80]!r}")
    removed = []
    for name in structure.get("identities", []):
        try:
            current = fresh_model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(f"structure removes block {name!r}, which the fresh model lacks") from None
        if not isinstance(current, nn.Identity):
            fresh_model.set_submodule(name, nn.Identity())
            removed.append(name)
    for name, counts in structure.get("heads", {}).items():
        try:
            holder = fresh_model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(f"structure records attention heads of {name!r}, which the fresh model lacks") from None
        for attr, value in counts.items():
            if attr not in _HEAD_ATTRS:
                raise ArtifactError(f"structure sets unknown attribute {attr!r} on {name!r}: the file is corrupt")
            setattr(holder, attr, int(value))
    layers = structure.get("layers", {})
    for name, m in fresh_model.named_modules():
        if _kind(m) is None:
            continue
        if name not in layers:
            raise ArtifactError(f"the fresh model has layer {name!r} that the structure does not record: "
                                "rebuild from the architecture the model was pruned from")
        _reshape(m, layers[name], name)
    missing = set(layers) - {n for n, _ in fresh_model.named_modules()}
    if missing:
        raise ArtifactError(f"structure records layers the fresh model lacks: {sorted(missing)[:5]}")
    return fresh_model.eval()

