"""Candidate grids for the practitioner's strategies (survey / seed 003).

shrink-and-improve (footprint-sensitive): shrink the trained model with compression (unstructured
pruning at several sparsities, structured channel pruning, INT8, BF16), then improve the shrunken model with learning (distillation from the
uncompressed model), and combine them in the textbook's order: prune -> distill -> quantize.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..compress.prune import ChannelPruneConfig, HeadPruneConfig, MagnitudeConfig, WeightPruneConfig, head_sites
from ..compress.lowrank import SVDConfig, TuckerConfig
from ..compress.quantize import FloatFormatConfig, PTQConfig, WeightOnlyConfig
from ..compress.share import ClusterConfig
from ..core.errors import ConfigError, suggest
from ..learn import DistillConfig
from .recipe import Recipe


@dataclass(frozen=True)
class CandidateSpec:
    id: str
    label: str
    recipe: Recipe
    runtimes: tuple[str, ...] | None = None  # None: every runtime the model can be lowered to

    def key(self, settings: dict) -> str:
        """Identity for resuming: the recipe, runtimes and measurement settings."""
        blob = json.dumps({"recipe": self.recipe.to_list(), "runtimes": self.runtimes, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shrink_and_improve(*, finetune_epochs: float = 2.0, distill_epochs: float = 8.0, model=None) -> list[CandidateSpec]:
    """The grid; a ``model`` with attention layers also gets attention-head pruning candidates."""
    p50 = MagnitudeConfig(sparsity=0.5, finetune_epochs=finetune_epochs)
    p80 = MagnitudeConfig(sparsity=0.8, schedule="iterative", rounds=3, finetune_epochs=finetune_epochs)
    p90 = MagnitudeConfig(sparsity=0.9, schedule="iterative", rounds=4, finetune_epochs=finetune_epochs)
    # one-shot at the same final sparsity and the same total fine-tuning budget: the iterative-vs-one-shot pair
    p90_once = MagnitudeConfig(sparsity=0.9, finetune_epochs=4 * finetune_epochs)
    ch50 = ChannelPruneConfig(ratio=0.5, finetune_epochs=finetune_epochs)
    # Zhu-Gupta gradual ramp with per-layer budgets from a sensitivity analysis (its curves go in the report)
    g90 = WeightPruneConfig(sparsity=0.9, distribution="sensitivity", schedule="gradual", prune_epochs=2.0,
                            finetune_epochs=finetune_epochs)
    kd = DistillConfig(epochs=distill_epochs, lr=1e-3)
    q = PTQConfig()
    qp = PTQConfig(calibration="percentile", percentile=99.99)
    bf16 = FloatFormatConfig(format="bf16")
    grid = [
        ("baseline (FP32, eager)", (), ("eager",)),
        ("baseline, best FP32 runtime", (), None),
        ("prune 50%", (p50,), None),
        ("prune 80% iterative", (p80,), None),
        ("prune 90% iterative", (p90,), None),
        ("prune 90% one-shot (same budget)", (p90_once,), None),
        ("prune 90% + distill", (p90, kd), None),
        ("int8 PTQ (min-max)", (q,), None),
        ("int8 PTQ (percentile)", (qp,), None),
        ("prune 50% + int8", (p50, q), None),
        ("prune 80% + distill + int8", (p80, kd, q), None),
        ("prune 90% + distill + int8", (p90, kd, q), None),
        ("prune 90% gradual, sensitivity-allocated", (g90,), None),
        # structured: channels/neurons physically removed, so every runtime does less work
        ("channels -50% + distill", (ch50, kd), None),
        ("channels -50% + distill + int8", (ch50, kd, q), None),
        # BF16 weights: half the bytes, and the bf16 runtime (AMX/AVX-512 bf16 kernels) is tried on them
        ("bf16", (bf16,), None),
        ("channels -50% + distill + bf16", (ch50, kd, bf16), None),
    ]
    if model is not None and head_sites(model):
        heads50 = HeadPruneConfig(ratio=0.5, saliency="taylor", finetune_epochs=finetune_epochs)
        grid += [("heads -50% + distill", (heads50, kd), None), ("heads -50% + distill + int8", (heads50, kd, q), None)]
    return [CandidateSpec(f"c{i:02d}", label, Recipe(steps), rts) for i, (label, steps, rts) in enumerate(grid)]


def broad(*, finetune_epochs: float = 2.0, distill_epochs: float = 8.0, model=None) -> list[CandidateSpec]:
    """shrink-and-improve plus the other compression families: low-rank factorization (SVD of Linear
    layers, Tucker-2 of convolutions), weight sharing (Deep Compression: prune -> distill -> k-means
    -> Huffman) and 4-bit group-wise weights. Families that do not fit the model are left out."""
    grid = shrink_and_improve(finetune_epochs=finetune_epochs, distill_epochs=distill_epochs, model=model)
    kd = DistillConfig(epochs=distill_epochs, lr=1e-3)
    p90 = MagnitudeConfig(sparsity=0.9, schedule="iterative", rounds=4, finetune_epochs=finetune_epochs)
    extra = [
        ("prune 90% + distill + share 4-bit (Deep Compression)", (p90, kd, ClusterConfig(bits=4, huffman=True))),
        ("int4 weights (group 32)", (WeightOnlyConfig(bits=4, granularity="group", group_size=32),)),
    ]
    kinds = {type(m).__name__ for m in model.modules()} if model is not None else {"Linear", "Conv2d"}
    if "Linear" in kinds:
        extra.append(("low-rank SVD 25% + distill", (SVDConfig(rank="ratio", ratio=0.25, finetune_epochs=finetune_epochs), kd)))
    if "Conv2d" in kinds:
        extra.append(("Tucker-2 50% + distill", (TuckerConfig(ratio=0.5, finetune_epochs=finetune_epochs), kd)))
    start = len(grid)
    return grid + [CandidateSpec(f"c{start + i:02d}", label, Recipe(steps)) for i, (label, steps) in enumerate(extra)]


STRATEGIES = {"shrink-and-improve": shrink_and_improve, "broad": broad}


def candidates_for(strategy: str, **kw) -> list[CandidateSpec]:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}.{suggest(strategy, STRATEGIES)} Available: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](**kw)
