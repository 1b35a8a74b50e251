"""Candidate grids for the practitioner's strategies (survey / seed 003), and candidate files.

shrink-and-improve (footprint-sensitive): shrink the trained model with compression (unstructured
pruning at several sparsities, structured channel pruning, INT8, BF16), then improve the shrunken
model with learning (distillation from the uncompressed model), and combine them in the textbook's
order: prune -> distill -> quantize. For text tasks it is the ``text`` grid (below).

The other named strategies reach every technique family from the main job: ``broad`` (+ low-rank,
weight sharing, 4-bit weights), ``quantization`` (dynamic INT8, entropy/MSE calibration, QAT,
mixed precision, binary/ternary), ``sparse-training`` (lottery tickets, SET/RigL), ``lowrank``
(SVD, Tucker-2, CP, tensor train), ``learning`` (hints/attention transfer, augmentation, SimCLR
pre-training) and ``text`` (encoders: attention-head pruning + distillation, dynamic/static INT8,
BF16; decoder LMs: dynamic INT8, BF16, weight-only 8/4-bit, magnitude pruning).
``load_candidates(path)`` reads a YAML/JSON list of candidates instead.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..compress.prune import (
    ChannelPruneConfig, HeadPruneConfig, LotteryConfig, MagnitudeConfig, SparseTrainingConfig, WeightPruneConfig,
    head_sites,
)
from ..compress.lowrank import CPConfig, SVDConfig, TTConfig, TuckerConfig
from ..compress.quantize import (
    BinaryConfig, FloatFormatConfig, MixedConfig, PTQConfig, QATConfig, TernaryConfig, WeightOnlyConfig,
)
from ..compress.share import ClusterConfig
from ..core.errors import ConfigError, suggest
from ..learn import AugmentConfig, DistillConfig, HintConfig, SimCLRConfig
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


def _specs(grid, start: int = 0) -> list[CandidateSpec]:
    """CandidateSpecs c<start>... from (label, steps[, runtimes]) rows."""
    return [CandidateSpec(f"c{start + i:02d}", row[0], Recipe(tuple(row[1])), row[2] if len(row) > 2 else None)
            for i, row in enumerate(grid)]


_BASELINES = [("baseline (FP32, eager)", (), ("eager",)), ("baseline, best FP32 runtime", ())]


def _kinds(model) -> set[str]:
    return {type(m).__name__ for m in model.modules()} if model is not None else {"Linear", "Conv2d"}


def quantization(*, finetune_epochs: float = 2.0, model=None, **_) -> list[CandidateSpec]:
    """Every quantization family: static INT8 under each calibration, dynamic INT8, QAT (8 and 4 bit),
    mixed precision under a 4-bit-per-weight budget, binary and ternary weights, 4-bit weights."""
    return _specs(_BASELINES + [
        ("int8 PTQ (min-max)", (PTQConfig(),)),
        ("int8 PTQ (entropy)", (PTQConfig(calibration="entropy"),)),
        ("int8 PTQ (MSE)", (PTQConfig(calibration="mse"),)),
        ("int8 dynamic", (PTQConfig(mode="dynamic"),)),
        # QAT converts itself: INT8 (PT2E, trained input ranges) at 8 bits with activations, packed weights below
        ("QAT int8", (QATConfig(bits=8, activations=True, epochs=finetune_epochs),)),
        ("QAT int4 weights (group 32)", (QATConfig(bits=4, granularity="group", group_size=32, epochs=finetune_epochs),)),
        ("mixed precision (4 bits/weight budget)", (MixedConfig(budget_bits_per_weight=4.0, keep_first_last=False),)),
        ("binary weights", (BinaryConfig(epochs=finetune_epochs),)),
        ("ternary weights", (TernaryConfig(epochs=finetune_epochs),)),
        ("int4 weights (group 32)", (WeightOnlyConfig(bits=4, granularity="group", group_size=32),)),
    ])


def sparse_training(*, finetune_epochs: float = 2.0, model=None, **_) -> list[CandidateSpec]:
    """Sparse networks trained from scratch: lottery tickets (iterative magnitude pruning with rewinding)
    and SET / RigL at a fixed 90% sparsity (ERK)."""
    epochs = 5 * finetune_epochs
    return _specs(_BASELINES + [
        ("lottery ticket (3 rounds of 20%, rewind to init)", (LotteryConfig(rounds=3, epochs=epochs),)),
        ("SET 90% (ERK)", (SparseTrainingConfig(method="set", epochs=epochs),)),
        ("RigL 90% (ERK)", (SparseTrainingConfig(method="rigl", epochs=epochs),)),
        ("RigL 90% + int8", (SparseTrainingConfig(method="rigl", epochs=epochs), PTQConfig())),
    ])


def lowrank(*, finetune_epochs: float = 2.0, distill_epochs: float = 8.0, model=None, **_) -> list[CandidateSpec]:
    """Low-rank and tensor decompositions that fit the model (Linear: SVD, tensor train; Conv2d:
    Tucker-2, CP), each recovered by distillation."""
    kd = DistillConfig(epochs=distill_epochs)
    kinds = _kinds(model)
    grid = list(_BASELINES)
    if "Linear" in kinds:
        grid += [("low-rank SVD 25% + distill", (SVDConfig(rank="ratio", ratio=0.25, finetune_epochs=finetune_epochs), kd)),
                 ("tensor train rank 8 + distill", (TTConfig(rank=8, finetune_epochs=finetune_epochs), kd))]
    if "Conv2d" in kinds:
        grid += [("Tucker-2 50% + distill", (TuckerConfig(ratio=0.5, finetune_epochs=finetune_epochs), kd)),
                 ("CP 50% + distill", (CPConfig(ratio=0.5, finetune_epochs=finetune_epochs), kd))]
    return _specs(grid)


def _last_conv(model) -> str | None:
    convs = [n for n, m in model.named_modules() if type(m).__name__ in ("Conv2d", "Conv1d")] if model is not None else []
    return convs[-1] if convs else None


def learning(*, finetune_epochs: float = 2.0, distill_epochs: float = 8.0, model=None, **_) -> list[CandidateSpec]:
    """The learning techniques on a half-width (channels -50%) student: logit distillation,
    attention transfer at the last conv layer (hint), augmentation with label smoothing, and
    SimCLR pre-training on the unlabelled train images."""
    ch50 = ChannelPruneConfig(ratio=0.5, finetune_epochs=finetune_epochs)
    grid = list(_BASELINES) + [
        ("channels -50% + distill", (ch50, DistillConfig(epochs=distill_epochs))),
        ("channels -50% + augment (shift, label smoothing)", (ch50, AugmentConfig(shift=2, label_smoothing=0.1,
                                                                                    epochs=distill_epochs))),
        ("channels -50% + distill with augmentation", (ch50, DistillConfig(epochs=distill_epochs, shift=2, mixup=0.2))),
        ("SimCLR pre-training + fine-tune", (SimCLRConfig(epochs=distill_epochs),)),
    ]
    conv = _last_conv(model)
    if conv is not None:
        hint = HintConfig(student_layers=(conv,), teacher_layers=(conv,), loss="attention", epochs=distill_epochs)
        grid.insert(3, ("channels -50% + attention transfer", (ch50, hint)))
    return _specs(grid)


def text(*, finetune_epochs: float = 2.0, distill_epochs: float = 8.0, model=None, kind: str = "sentence-embedding",
         **_) -> list[CandidateSpec]:
    """Text models. Encoders (sentence embedding, text classification): attention-head pruning and
    FFN-neuron pruning (BERT-style layer names), each with distillation from the dense model, dynamic INT8 (also with the FFN output projections kept FP32,
    the layers REFERENCE.md found dominate the INT8 error), static INT8 and BF16. Decoder LMs:
    dynamic INT8, BF16, weight-only INT8 and INT4 (smaller on disk, not faster: no low-bit kernel
    here) and 50% magnitude pruning (no speed-up on these runtimes either). Fine-tuning budgets are
    fractions of an epoch: a pass over the text takes minutes on 2 cores."""
    ffn_out = "backbone.encoder.layer.*.output.dense"
    if kind == "causal-lm":
        return _specs(_BASELINES + [
            ("int8 dynamic", (PTQConfig(mode="dynamic"),)),
            ("bf16", (FloatFormatConfig(format="bf16"),)),
            ("int8 weights (per channel)", (WeightOnlyConfig(bits=8, granularity="channel"),)),
            ("int4 weights (group 128)", (WeightOnlyConfig(bits=4, granularity="group", group_size=128),)),
            ("prune 50% (magnitude, no fine-tuning)", (MagnitudeConfig(sparsity=0.5),)),
        ])
    kd = DistillConfig(epochs=min(distill_epochs, 0.25), lr=2e-5, alpha=0.5)
    q_dyn = PTQConfig(mode="dynamic")
    grid = list(_BASELINES) + [
        ("int8 dynamic", (q_dyn,)),
        ("bf16", (FloatFormatConfig(format="bf16"),)),
        ("int8 static (PT2E / ORT QDQ)", (PTQConfig(),)),
    ]
    if model is not None and any(n.endswith("output.dense") and ".attention." not in n for n, _ in model.named_modules()):
        q_dyn = PTQConfig(mode="dynamic", exclude=(ffn_out,))  # the faithful variant, also after head pruning
        grid.insert(3, ("int8 dynamic, FFN output FP32", (q_dyn,)))
    if model is not None and head_sites(model):
        for r in (0.25, 0.5):
            heads = HeadPruneConfig(ratio=r, saliency="taylor", batches=4)
            grid += [(f"heads -{r:.0%} + distill", (heads, kd)), (f"heads -{r:.0%} + distill + int8 dynamic", (heads, kd, q_dyn))]
    if model is not None and any(n.endswith("intermediate.dense") for n, _ in model.named_modules()):
        # FFN neurons only: the intermediate layer's outputs; embeddings, attention and the residual
        # width (every output.dense) are protected
        ffn = ChannelPruneConfig(ratio=0.25, protect_first=False, protect=(
            "backbone.embeddings*", "backbone.encoder.layer.*.attention*", "backbone.encoder.layer.*.output*"))
        grid += [("FFN -25% + distill", (ffn, kd)), ("FFN -25% + distill + int8 dynamic", (ffn, kd, q_dyn))]
    return _specs(grid)


STRATEGIES = {"shrink-and-improve": shrink_and_improve, "broad": broad, "quantization": quantization,
              "sparse-training": sparse_training, "lowrank": lowrank, "learning": learning, "text": text}
#: task kinds each strategy is for (None: any); shrink-and-improve switches to ``text`` on text tasks
_FOR_TENSORS = ("classification",)
STRATEGY_TASKS = {"broad": _FOR_TENSORS, "quantization": _FOR_TENSORS, "sparse-training": _FOR_TENSORS,
                  "lowrank": _FOR_TENSORS, "learning": _FOR_TENSORS,
                  "text": ("text-classification", "sentence-embedding", "causal-lm")}


def candidates_for(strategy: str, *, task=None, **kw) -> list[CandidateSpec]:
    """The candidates of ``strategy`` for ``task`` (its model and kind), or for ``model=`` alone."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}.{suggest(strategy, STRATEGIES)} Available: {', '.join(STRATEGIES)}")
    if task is not None:
        kw.setdefault("model", task.model)
        if strategy == "shrink-and-improve" and task.kind != "classification":
            strategy = "text"
        allowed = STRATEGY_TASKS.get(strategy)
        if allowed is not None and task.kind not in allowed:
            raise ConfigError(f"strategy {strategy!r} is for {', '.join(allowed)} tasks, not {task.kind}: use "
                              "shrink-and-improve (it picks the grid for the task)")
        if strategy == "text":
            kw["kind"] = task.kind
    return STRATEGIES[strategy](**kw)


def load_candidates(path: str | Path) -> list[CandidateSpec]:
    """Candidates from a YAML/JSON file: a list of ``{label: ..., steps: [{technique: ..., ...}, ...],
    runtimes: [...]}`` (runtimes optional: every runtime that fits). Ids follow the file's order;
    the first candidate is the baseline, so give it no steps."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"candidates file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"candidates file {str(p)!r} is not valid {p.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{str(p)!r} must hold a non-empty list of candidates ({{label, steps, runtimes}})")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or set(item) - {"label", "steps", "runtimes"} or "steps" not in item:
            raise ConfigError(f"{str(p)!r}, candidate {i}: a mapping with 'steps' (a list of {{technique: ...}}) "
                              f"and optional 'label' and 'runtimes', got {item!r}")
        recipe = Recipe.from_dict({"steps": item["steps"]})
        runtimes = item.get("runtimes")
        if runtimes is not None and (not isinstance(runtimes, list) or not all(isinstance(r, str) for r in runtimes)):
            raise ConfigError(f"{str(p)!r}, candidate {i}: runtimes must be a list of runtime names")
        out.append(CandidateSpec(f"c{i:02d}", str(item.get("label") or recipe.label()), recipe,
                                 tuple(runtimes) if runtimes else None))
    if out[0].recipe.steps:
        raise ConfigError(f"{str(p)!r}: the first candidate is the baseline the others are compared with: give it "
                          "no steps (steps: [])")
    return out
