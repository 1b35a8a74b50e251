"""Statistics of the inputs each Linear layer sees on real calibration batches, in one forward pass.

The second-order and activation-aware methods (GPTQ, SparseGPT, Wanda, AWQ, SmoothQuant) all start
from the same numbers about a layer's input X (rows = tokens or examples, columns = in_features):

- ``xtx``: the sum of x x^T over rows (GPTQ's and SparseGPT's Hessian is 2 X^T X / rows);
- ``sq_sum``: the sum of x_j^2 per input feature (Wanda's ||X_j||_2 is its square root);
- ``abs_max`` and ``abs_sum``: per-feature activation magnitudes (SmoothQuant, AWQ);
- ``sample``: up to ``keep_rows`` input rows (reservoir-sampled with a seeded generator), for
  methods that search a scale against the layer's real output error.

The statistics are taken on the model as given (all layers at once, not layer after layer with
earlier layers already compressed); a method that wants the sequential form runs this per block.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import DataError


@dataclass
class InputStats:
    """What one Linear layer's inputs looked like on the calibration batches."""

    in_features: int
    sq_sum: torch.Tensor  # (in,) sum of x_j^2
    abs_max: torch.Tensor  # (in,)
    abs_sum: torch.Tensor  # (in,)
    rows: int = 0
    xtx: torch.Tensor | None = None  # (in, in) float32, sum of x x^T; None when not asked for
    sample: torch.Tensor | None = None  # (<= keep_rows, in) input rows, None when keep_rows is 0

    def hessian(self) -> torch.Tensor:
        """2 X^T X / rows, the Hessian of the layer's squared output error in its weights (per output row)."""
        if self.xtx is None:
            raise ValueError("these statistics were taken without the Hessian (hessian=False)")
        return self.xtx * (2.0 / max(self.rows, 1))

    def col_norm(self) -> torch.Tensor:
        """||X_j||_2 of every input feature j over the calibration rows (Wanda's activation norm)."""
        return self.sq_sum.sqrt()

    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)


def _rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    return x.detach().reshape(-1, in_features).float()


class _Collector:
    def __init__(self, in_features: int, hessian: bool, keep_rows: int, generator: torch.Generator) -> None:
        self.stats = InputStats(in_features, torch.zeros(in_features), torch.zeros(in_features), torch.zeros(in_features),
                                xtx=torch.zeros(in_features, in_features) if hessian else None)
        self.keep_rows, self.generator = keep_rows, generator

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        x = _rows(args[0], self.stats.in_features)
        s = self.stats
        if s.xtx is not None:
            s.xtx.addmm_(x.T, x)
        s.sq_sum += x.pow(2).sum(0)
        s.abs_max = torch.maximum(s.abs_max, x.abs().amax(0))
        s.abs_sum += x.abs().sum(0)
        if self.keep_rows:
            self._reservoir(x, s.rows)
        s.rows += x.shape[0]

    def _reservoir(self, x: torch.Tensor, seen: int) -> None:
        # uniform sample of all rows so far without holding them (Vitter's algorithm R, vectorised per batch)
        s = self.stats
        have = 0 if s.sample is None else s.sample.shape[0]
        take = min(self.keep_rows - have, x.shape[0])
        if take > 0:
            s.sample = x[:take].clone() if s.sample is None else torch.cat([s.sample, x[:take]])
        rest = x[take:]
        if rest.shape[0]:
            pos = torch.arange(seen + take, seen + x.shape[0]) + 1  # 1-based index of each remaining row
            slot = (torch.rand(rest.shape[0], generator=self.generator) * pos).long()
            keep = slot < self.keep_rows
            s.sample[slot[keep]] = rest[keep]


def input_stats(model: nn.Module, layers: Mapping[str, nn.Linear], batches: Iterable, *, hessian: bool = True,
                keep_rows: int = 0, seed: int = 0) -> dict[str, InputStats]:
    """Run ``model`` on every batch (no gradients, eval mode kept as the caller set it) and return each
    layer's :class:`InputStats`, by the names in ``layers``."""
    gen = torch.Generator().manual_seed(seed)
    collectors = {name: _Collector(m.in_features, hessian, keep_rows, gen) for name, m in layers.items()}
    handles = [m.register_forward_hook(collectors[name]) for name, m in layers.items()]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise DataError("no calibration batches: give at least one batch of real inputs from the train split")
    for name, c in collectors.items():
        if c.stats.rows == 0:
            raise DataError(f"layer {name!r} saw no input on the calibration batches (is it on the forward path?)")
    return {name: c.stats for name, c in collectors.items()}


__all__ = ["InputStats", "input_stats"]
