"""A small BERT/MiniLM-shaped encoder over patches: the zoo's transformer.

Images (C, H, W) are cut into non-overlapping p x p patches and 1-D signals (C, L) into length-p
segments; each patch is a token. The encoder is BERT's post-LayerNorm block (attention, add & norm,
GELU feed-forward, add & norm), so the same structures that matter when compressing MiniLM are
here at a size that trains in seconds: per-head q/k/v/output projections (head pruning), FFN
Linear pairs (neuron pruning, low-rank) and LayerNorm.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ModelError
from .layers import check_classes, check_shape, check_width, scaled


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out Linear layers (BERT's layout).

    ``num_heads`` and ``head_dim`` are plain attributes: head pruning shrinks the projections and
    lowers ``num_heads``; ``head_dim`` never changes.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.query, self.key, self.value = (nn.Linear(dim, inner) for _ in range(3))
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value))
        return self.out(ctx.transpose(1, 2).reshape(b, t, -1))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, num_heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ffn(x))


class PatchEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, patch: int, dim: int, depth: int,
                 heads: int, ffn: int) -> None:
        super().__init__()
        conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
        self.patch = conv(input_shape[0], dim, patch, stride=patch)  # one token per patch
        tokens = math.prod(s // patch for s in input_shape[1:])
        self.position = nn.Embedding(tokens, dim)
        self.register_buffer("positions", torch.arange(tokens), persistent=False)
        self.norm = nn.LayerNorm(dim)
        head_dim = dim // heads
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, head_dim, ffn) for _ in range(depth)))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = self.norm(tokens + self.position(self.positions))
        return self.classifier(self.layers(tokens).mean(1))


def encoder(*, input_shape: tuple, num_classes: int, patch: int = 7, dim: int = 64, depth: int = 2,
            heads: int = 4, ffn: int = 128, width: float = 1.0) -> PatchEncoder:
    """Patch tokens -> ``depth`` BERT encoder layers (``heads`` heads of dim/heads) -> mean -> Linear."""
    shape = check_shape("encoder", input_shape, ranks=(2, 3))
    check_classes("encoder", num_classes)
    check_width("encoder", width)
    for knob, v in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads), ("ffn", ffn)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelError(f"encoder: {knob} must be a positive int, got {v!r}")
    if any(s < patch for s in shape[1:]):
        raise ModelError(f"encoder: patch {patch} is larger than the input {shape[1:]}: use a smaller patch")
    dim = scaled(dim, width)
    if dim % heads:
        raise ModelError(f"encoder: dim {dim} (after width) must be divisible by heads {heads}")
    return PatchEncoder(shape, num_classes, patch, dim, depth, heads, scaled(ffn, width))
