"""The modules a decomposed layer becomes, each rebuilt from a plain-data ``spec`` (no pickle).

``Factorized`` is an ``nn.Sequential`` of standard Linear/Conv layers (so every runtime and the
ONNX exporter handle it unchanged); ``TTLinear`` holds tensor-train cores and contracts them with
the input. Both carry ``spec``, the JSON-ready description ``from_spec`` builds an empty twin from;
``structure.py`` saves it next to the layer shapes.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...core.errors import ArtifactError

KINDS = ("svd", "tucker", "cp", "spatial_svd", "tt")


def _conv(cin, cout, kernel, *, stride=1, padding=0, dilation=1, groups=1, bias=False, padding_mode="zeros"):
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bias, padding_mode=padding_mode)


def _axis(value, axis: int, neutral: int):
    """A (height, width) conv setting restricted to one axis; strings ('same', 'valid') pass unchanged."""
    return value if isinstance(value, str) else tuple(v if a == axis else neutral for a, v in enumerate(value))


class Factorized(nn.Sequential):
    """A Linear or Conv2d replaced by a chain of smaller standard layers (bias on the last)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(*_layers(spec))
        self.spec = dict(spec)

    def extra_repr(self) -> str:
        return f"kind={self.spec['kind']}"


def _layers(s: dict[str, Any]) -> list[nn.Module]:
    kind = s.get("kind")
    if kind == "svd":
        r = s["rank"]
        return [nn.Linear(s["in_features"], r, bias=False), nn.Linear(r, s["out_features"], bias=s["bias"])]
    if kind not in ("tucker", "cp", "spatial_svd"):
        raise ArtifactError(f"unknown factorized layer kind {kind!r} in a structure record: expected one of {KINDS}")
    cin, cout, k = s["in_channels"], s["out_channels"], tuple(s["kernel_size"])
    conv = {"stride": tuple(s["stride"]), "dilation": tuple(s["dilation"]),
            "padding": s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"]),
            "padding_mode": s["padding_mode"]}
    if kind == "tucker":
        r_in, r_out = s["ranks"]
        return [_conv(cin, r_in, 1), _conv(r_in, r_out, k, **conv), _conv(r_out, cout, 1, bias=s["bias"])]
    # The two axis-wise convs split stride/padding/dilation between them: height first, then width.
    along_h = {"stride": _axis(conv["stride"], 0, 1), "dilation": _axis(conv["dilation"], 0, 1),
               "padding": _axis(conv["padding"], 0, 0), "padding_mode": conv["padding_mode"]}
    along_w = {"stride": _axis(conv["stride"], 1, 1), "dilation": _axis(conv["dilation"], 1, 1),
               "padding": _axis(conv["padding"], 1, 0), "padding_mode": conv["padding_mode"]}
    r = s["rank"]
    if kind == "cp":
        return [_conv(cin, r, 1), _conv(r, r, (k[0], 1), groups=r, **along_h),
                _conv(r, r, (1, k[1]), groups=r, **along_w), _conv(r, cout, 1, bias=s["bias"])]
    return [_conv(cin, r, (k[0], 1), **along_h), _conv(r, cout, (1, k[1]), bias=s["bias"], **along_w)]


class TTLinear(nn.Module):
    """y = W x + b with W (prod out_modes x prod in_modes) held as tensor-train cores.

    Core k has shape (r_{k-1}, out_modes[k], in_modes[k], r_k), r_0 = r_d = 1, and
    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :] (row-major indices).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        outs, ins, ranks = spec["out_modes"], spec["in_modes"], [1, *spec["ranks"], 1]
        if not (len(outs) == len(ins) == len(ranks) - 1):
            raise ArtifactError(f"tensor-train spec with inconsistent lengths: {spec}")
        self.in_features, self.out_features = math.prod(ins), math.prod(outs)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], outs[k], ins[k], ranks[k + 1])) for k in range(len(outs)))
        self.bias = nn.Parameter(torch.empty(self.out_features)) if spec["bias"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        b = x.reshape(-1, self.in_features).shape[0]
        ins = self.spec["in_modes"]
        # t: (batch, output modes done P, bond j, input mode n, input modes left Q); each step contracts
        # (j, n) with one core as a plain matmul (counted by metrics.flops, exported as ONNX MatMul).
        t = x.reshape(b, 1, 1, ins[0], -1)
        for k, core in enumerate(self.cores):
            _, p, j, n, q = t.shape
            m, s = core.shape[1], core.shape[3]
            y = t.permute(0, 1, 4, 2, 3).reshape(b * p * q, j * n) @ core.permute(0, 2, 1, 3).reshape(j * n, m * s)
            nxt = ins[k + 1] if k + 1 < len(ins) else 1
            t = y.reshape(b, p, q, m, s).permute(0, 1, 3, 4, 2).reshape(b, p * m, s, nxt, -1)
        y = t.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def weight_matrix(self) -> torch.Tensor:
        """The dense (out_features x in_features) matrix the cores represent."""
        outs, ins = self.spec["out_modes"], self.spec["in_modes"]
        full = self.cores[0]
        for core in list(self.cores)[1:]:
            full = torch.tensordot(full, core, dims=([full.dim() - 1], [0]))
        d = len(outs)
        full = full.reshape(*[n for pair in zip(outs, ins) for n in pair])  # (m1, n1, m2, n2, ...)
        perm = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
        return full.permute(*perm).reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_modes={self.spec['in_modes']}, out_modes={self.spec['out_modes']}, ranks={self.spec['ranks']}"


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """An uninitialised module of the recorded architecture (weights come from load_state_dict)."""
    if not isinstance(spec, dict):
        raise ArtifactError(f"a factorized-layer spec must be a mapping, got {spec!r}")
    return TTLinear(spec) if spec.get("kind") == "tt" else Factorized(spec)


def spec_of(module: nn.Module) -> dict[str, Any] | None:
    return module.spec if isinstance(module, (Factorized, TTLinear)) else None
