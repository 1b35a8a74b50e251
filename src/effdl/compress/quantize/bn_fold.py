"""Fold BatchNorm into the Conv/Linear layer it follows (inference-time, lossless).

An eval-mode BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one conv with
weight ``w * g / sqrt(var + eps)`` and bias ``(b - mean) * g / sqrt(var + eps) + beta``; torch's
own ``fuse_conv_bn_weights`` does that arithmetic (a conv without bias gets one; a BN without affine
uses g = 1, beta = 0; var ~ 0 is safe because eps is added). Which BN follows which layer is read
from the torch.fx graph, not guessed from module order: a BN is folded only when its sole input is
a Conv/Linear output used by nothing else (grouped and depthwise convs fold the same way: their
output channels are dim 0 of the weight, like any conv).
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from ...core.errors import ConfigError, UnsupportedModuleError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def trace(model: nn.Module, who: str) -> fx.GraphModule:
    """torch.fx graph of ``model`` (leaf modules kept as ``call_module`` nodes named as in the model)."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot read the graph"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModuleError(
            f"{who}: torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {first}). "
            "Fix: avoid Python control flow on tensor values in forward, or turn this option off"
        ) from None


def module_calls(gm: fx.GraphModule) -> dict[str, int]:
    """How many times each submodule is called in the graph (shared modules cannot be rewritten)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) module names where the BN directly and solely consumes the layer's output."""
    if not any(isinstance(m, _BNS) for m in model.modules()):
        return []  # nothing to fold: no need to trace (models torch.fx cannot trace pass through)
    gm = trace(model, "fold_batchnorm")
    calls = module_calls(gm)
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BNS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = gm.get_submodule(src.target)
        if not isinstance(layer, _CONVS + (nn.Linear,)) or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if isinstance(layer, nn.Linear) and not isinstance(gm.get_submodule(node.target), nn.BatchNorm1d):
            continue
        pairs.append((src.target, node.target))
    return pairs


def _check_bn(name: str, bn: nn.Module, features: int) -> None:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModuleError(
            f"fold_batchnorm: BatchNorm {name!r} has no running statistics (track_running_stats=False), so it "
            "normalises with each batch's statistics even in eval mode and cannot be folded. Fix: keep "
            "fold_bn=False for this model, or train it with track_running_stats=True"
        )
    if bn.num_features != features:
        raise UnsupportedModuleError(
            f"fold_batchnorm: BatchNorm {name!r} has {bn.num_features} features but the layer before it "
            f"has {features} outputs. Fix: keep fold_bn=False for this model"
        )


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every foldable BN merged into its layer and replaced by Identity.

    Module names are kept (the BN's name now holds an ``nn.Identity``). Refuses a model in train
    mode: there BN uses batch statistics and folding would change the function.
    """
    if model.training:
        raise ConfigError("fold_batchnorm: the model is in train mode (BatchNorm uses batch statistics); "
                          "call model.eval() first")
    out = copy.deepcopy(model)
    for layer_name, bn_name in conv_bn_pairs(out):
        layer, bn = out.get_submodule(layer_name), out.get_submodule(bn_name)
        is_conv = isinstance(layer, _CONVS)
        _check_bn(bn_name, bn, layer.out_channels if is_conv else layer.out_features)
        fuse = fuse_conv_bn_weights if is_conv else fuse_linear_bn_weights
        args = (layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps)
        if is_conv:
            w, b = fuse(*args, bn.weight, bn.bias)
        else:  # torch's linear helper wants the affine tensors; a BN without affine is (1, 0)
            ones, zeros = torch.ones_like(bn.running_mean), torch.zeros_like(bn.running_mean)
            w, b = fuse(*args, bn.weight if bn.weight is not None else ones, bn.bias if bn.bias is not None else zeros)
        fused = copy.deepcopy(layer)
        fused.weight = nn.Parameter(w.detach().clone(), requires_grad=layer.weight.requires_grad)
        fused.bias = nn.Parameter(b.detach().clone(), requires_grad=layer.weight.requires_grad)
        out.set_submodule(layer_name, fused)
        out.set_submodule(bn_name, nn.Identity())
    return out
