"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For two layers in a row, y = W2 f(W1 x + b1) with f positively homogeneous per channel
(f(x / s) = f(x) / s for s > 0: ReLU, LeakyReLU, max/avg pooling, nothing), scaling output
channel i of layer 1 by 1/s_i and input channel i of layer 2 by s_i leaves the function unchanged.
The paper's choice s_i = (1 / r2_i) sqrt(r1_i r2_i), r1_i = max |W1[i, :]| and r2_i = max |W2[:, i]|,
makes both ranges sqrt(r1_i r2_i), which evens out per-channel weight ranges so one per-tensor
scale fits every channel (depthwise convs have wildly different channel ranges). Chains of layers
are iterated until the scales stop changing.

ReLU6 is not homogeneous (its ceiling 6 does not scale), so the paper swaps it for ReLU; here it is
replaced by ``ChannelClamp`` with a per-channel ceiling 6 / s_i, which keeps the model exact.
Run after BatchNorm folding: a BN between two layers stops the pair.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .bn_fold import module_calls, trace

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: modules with f(x / s) = f(x) / s per channel for s > 0
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_HOMOGENEOUS_FN = {torch.relu, F.relu, torch.max_pool1d, torch.max_pool2d, F.max_pool1d, F.max_pool2d,
                   F.avg_pool1d, F.avg_pool2d, F.leaky_relu}
#: floor of a channel range: an all-zero channel keeps s = 1
_TINY = 1e-12


class ChannelClamp(nn.Module):
    """min(relu(x), upper[c]) per channel (dim 1): ReLU6 after its channels were scaled by 1/s."""

    upper: torch.Tensor

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.minimum(torch.relu(x), self.upper.reshape(shape))


def _is_relu6(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU6) or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val > 0)


def _passes(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int]) -> str | None:
    """'homogeneous' / 'relu6' when ``node`` keeps the per-channel scaling exact, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if calls[node.target] != 1:
            return None
        if isinstance(m, ChannelClamp) or _is_relu6(m):
            return "relu6"
        return "homogeneous" if isinstance(m, _HOMOGENEOUS) else None
    if node.op == "call_function" and node.target in _HOMOGENEOUS_FN:
        return "homogeneous"
    return None


def equalizable_pairs(model: nn.Module) -> list[tuple[str, str, str | None]]:
    """(layer 1, layer 2, clamp module or None) for every chain layer -> [homogeneous ops] -> layer
    in which each intermediate result has a single user and channels line up."""
    gm = trace(model, "equalize")
    calls = module_calls(gm)
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _LAYERS):
            continue
        if calls[node.target] != 1:
            continue
        cur, clamp, ok = node, None, True
        while True:
            if len(cur.users) != 1:
                ok = False
                break
            nxt = next(iter(cur.users))
            if nxt.args[:1] != (cur,):
                ok = False
                break
            if nxt.op == "call_module" and isinstance(gm.get_submodule(nxt.target), _LAYERS):
                break
            kind = _passes(nxt, gm, calls)
            if kind is None or (kind == "relu6" and clamp is not None):
                ok = False
                break
            if kind == "relu6":
                clamp = nxt.target
            cur = nxt
        if not ok or calls[nxt.target] != 1:
            continue
        l1, l2 = gm.get_submodule(node.target), gm.get_submodule(nxt.target)
        out1 = l1.out_features if isinstance(l1, nn.Linear) else l1.out_channels
        in2 = l2.in_features if isinstance(l2, nn.Linear) else l2.in_channels
        if out1 == in2 and isinstance(l1, nn.Linear) == isinstance(l2, nn.Linear):
            pairs.append((node.target, nxt.target, clamp))
    return pairs


def _input_view(layer: nn.Module) -> torch.Tensor:
    """Layer 2's weight as (groups, out per group, in per group, rest): input channel i is
    [i // in_per_group, :, i % in_per_group, :]."""
    w = layer.weight
    g = getattr(layer, "groups", 1)
    return w.reshape(g, w.shape[0] // g, w.shape[1], -1)


def input_ranges(layer: nn.Module) -> torch.Tensor:
    """max |W| over everything that multiplies input channel i, for each input channel."""
    return _input_view(layer).detach().abs().amax(dim=(1, 3)).reshape(-1)


def output_ranges(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).abs().amax(1)


@torch.no_grad()
def equalize(model: nn.Module, *, max_iterations: int = 100, tol: float = 1e-3) -> nn.Module:
    """A copy of ``model`` with cross-layer equalization applied to every equalizable pair.

    Lossless in exact arithmetic (float32 rounding aside). Fold BatchNorm first (``fold_batchnorm``),
    or the BN between a conv and its activation blocks the pair.
    """
    out = copy.deepcopy(model)
    pairs = equalizable_pairs(out)
    for _, _, clamp in pairs:  # ReLU6 -> ChannelClamp(6) so its ceiling can follow the scaling
        if clamp is not None and not isinstance(out.get_submodule(clamp), ChannelClamp):
            relu6 = out.get_submodule(clamp)
            n = out.get_submodule(_layer_before(pairs, clamp)).weight.shape[0]
            out.set_submodule(clamp, ChannelClamp(torch.full((n,), float(relu6.max_val))))
    for _ in range(max_iterations):
        worst = 0.0
        for name1, name2, clamp in pairs:
            l1, l2 = out.get_submodule(name1), out.get_submodule(name2)
            r1, r2 = output_ranges(l1), input_ranges(l2)
            s = torch.where((r1 > _TINY) & (r2 > _TINY), torch.sqrt(r1.clamp_min(_TINY) / r2.clamp_min(_TINY)),
                            torch.ones_like(r1))
            shape1 = (-1,) + (1,) * (l1.weight.dim() - 1)
            l1.weight.div_(s.reshape(shape1))
            if l1.bias is not None:
                l1.bias.div_(s)
            view = _input_view(l2)
            l2.weight.copy_((view * s.reshape(view.shape[0], 1, view.shape[2], 1)).reshape(l2.weight.shape))
            if clamp is not None:
                out.get_submodule(clamp).upper.div_(s)
            worst = max(worst, float(s.log().abs().max()))
        if worst < tol:
            break
    return out


def _layer_before(pairs, clamp: str) -> str:
    return next(p[0] for p in pairs if p[2] == clamp)


def weight_sqnr_db(weight: torch.Tensor, granularity: str) -> float:
    """SQNR of a weight's symmetric int8 round trip (the effdl scheme), in dB."""
    from ...deploy.parity import sqnr_db
    from .ptq import quantize_weight

    q, scale = quantize_weight(weight.detach().float(), granularity)
    deq = q.float() * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    return sqnr_db(weight.detach().float(), deq)


__all__ = ["ChannelClamp", "equalizable_pairs", "equalize", "input_ranges", "output_ranges", "weight_sqnr_db"]
