"""share.cluster: weight sharing by k-means (Han et al. 2016, "trained quantization").

Each selected Conv/Linear layer's non-zero weights are clustered (1-D k-means, Lloyd's algorithm)
into ``2**bits`` centroids; every weight is replaced by its centroid, so the layer stores a small
codebook plus a ``bits``-bit index per non-zero. Centroid initialisation: ``linear`` (evenly spaced
between the smallest and largest weight: Deep Compression's best, it keeps the rare large weights),
``density`` (quantiles (i + 1/2)/k of the weights' distribution) or ``random`` (k weights drawn
at random, Forgy).

Zeros of a pruned layer are *not* clustered: a separate 0/1 mask keeps them exactly zero, and all
``2**bits`` centroids are for the non-zeros. The layer's weight becomes a parametrization
(``SharedWeights``: ``where(mask, codebook[indices], +0.0)``), so fine-tuning (``Task.train``)
updates the codebook, and autograd of the gather sums the gradients of all weights of a cluster into
its centroid, as Han et al. do; any later training (``learn.distill``) trains the centroids the same
way. The weight's stored ``original`` tensor is never read: it holds a dense copy of the clustered
weight, taken when this technique returns, so parameter and non-zero counts (and the dense FP32
size) of the model stay those of its layers (its zeros are the mask's; its values go stale if the
centroids are trained later).

Clustering a layer twice is refused (ConfigError): apply ``share.cluster`` once per layer, with the
final bits (several steps with disjoint ``layers`` give per-layer bits). The result is a
``ClusteredModel`` (a ``CompressedModel`` run on the FP32 runtimes) holding the clustered float model
as ``float_model`` (its float reference; the caller's model keeps its class); its
``storage_tensors()`` (see ``deep_compression``) make "bytes on disk" the size of the codebooks +
packed indices (or their Huffman coding when ``huffman`` is on). Training it (``learn.*``) trains
the centroids; other techniques must come before it (``core.forms``).

Record for the report (``records(model)["share.cluster"]``): ``deep_compression.storage_record``
(per layer: bits, shared values, sparsity, bytes with and without Huffman) plus ``histogram``: the
non-zero weights of the largest clustered layer before clustering (100 bins) with its centroids
after k-means and after fine-tuning (Han et al. 2016, figure 4).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field
from torch.nn.utils import parametrize

from ...core.compressed import CompressedModel
from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, UnsupportedModuleError
from ...core.forms import refuse_quantized
from ...core.records import Part, Record, attach, records
from ...core.registry import register
from ...core.scope import is_excluded, match_scopes
from ..prune.distribution import PRUNABLE

__all__ = ["ClusterConfig", "ClusteredModel", "SharedWeights", "cluster", "clustered_layers", "kmeans_1d",
           "shared_weights_of"]

INITS = ("linear", "density", "random")
HIST_BINS = 100  # of the weight histogram in the report's record


class ClusterLayer(Part):
    """What the Deep Compression container holds for one clustered layer (``deep_compression.storage_record``)."""

    bits: int
    shared_values: int
    params: int
    nonzero: int
    sparsity: float
    codebook_bytes: int
    bias_bytes: int
    bytes_fixed: int  # the layer's record with fixed-width indices
    bytes_huffman: int  # ... Huffman coded
    gap_bits: int
    stored: Literal["huffman", "fixed"]  # which of the two the file holds
    bytes_stored: int
    dense_bytes: int  # its weight and bias as dense FP32


class ClusterHistogram(Part):
    """The largest clustered layer's non-zero weights before clustering, with its centroids after
    k-means and now (after fine-tuning, when any)."""

    layer: str
    edges: list[float]
    counts: list[int]
    centroids_kmeans: list[float]
    centroids: list[float]


class ClusterRecord(Record):
    key = "share.cluster"
    layers: dict[str, ClusterLayer]
    container_bytes: int
    histogram: ClusterHistogram


class ClusterConfig(TechniqueConfig):
    """Weight sharing: k-means clustering of each layer's non-zero weights into 2**bits values."""

    bits: int = Field(4, ge=1, le=8, description="index bits per weight: 2**bits shared values per layer")
    conv_bits: int | None = Field(None, ge=1, le=8, description="bits for Conv layers (Deep Compression: 8 conv, 5 fc); None = bits")
    init: Literal["linear", "density", "random"] = Field("linear", description="centroid initialisation")
    iters: int = Field(100, ge=1, le=10000, description="most k-means (Lloyd) iterations per layer")
    layers: tuple[str, ...] = Field((), description="module-name glob patterns to cluster; empty = every Conv/Linear")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left unclustered")
    finetune_epochs: float = Field(0.0, ge=0.0, description="epochs of centroid fine-tuning (trained quantization)")
    lr: float = Field(1e-4, gt=0.0, description="fine-tuning learning rate")
    huffman: bool = Field(False, description="store relative indices + Huffman-coded streams (Deep Compression's last stage)")
    index_bits: int = Field(0, ge=0, le=8, description="bits of a relative position gap (Han: 8 conv, 5 fc); 0 = the smallest per layer")
    seed: int = Field(0, ge=0, description="seed of the random initialisation")


class SharedWeights(nn.Module):
    """Parametrization: weight = where(mask, codebook[indices], +0.0); ``original`` is not read."""

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor,
                 huffman: bool = False, index_bits: int = 0) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.detach().clone())
        # Not in the state dict: ``original`` holds the dense clustered weight, from which both
        # follow; keeping them out keeps the state dict the size of the dense model.
        self.register_buffer("indices", indices.detach().to(torch.uint8).clone(), persistent=False)
        self.register_buffer("mask", mask.detach().bool().clone(), persistent=False)
        self.huffman, self.index_bits = bool(huffman), int(index_bits)

    @property
    def bits(self) -> int:
        return max(1, (self.codebook.numel() - 1).bit_length())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.codebook[self.indices.long()]
        return torch.where(self.mask, w, torch.zeros((), dtype=w.dtype))


def shared_weights_of(module: nn.Module) -> SharedWeights | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, SharedWeights)), None)


def clustered_layers(model: nn.Module) -> list[tuple[str, nn.Module, SharedWeights]]:
    """(name, module, parametrization) of every clustered layer, in module order (a ClusteredModel's
    layers named as in its float model)."""
    out = []
    for name, m in unwrap(model).named_modules():
        p = shared_weights_of(m)
        if p is not None:
            out.append((name, m, p))
    return out


def _init(values: torch.Tensor, k: int, how: str, seed: int) -> torch.Tensor:
    if how == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    if how == "density":
        return torch.quantile(values, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    g = torch.Generator().manual_seed(seed)
    return values[torch.randperm(values.numel(), generator=g)[:k]].sort().values


def kmeans_1d(values: torch.Tensor, k: int, init: str = "linear", iters: int = 100,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids sorted ascending, index of each value's centroid) by Lloyd's algorithm.

    In 1-D the nearest centroid is found by binary search over the midpoints of the sorted
    centroids. A centroid left with no value keeps its position (it is never chosen by the data,
    but stays in the codebook). Computed in float64; stops early when no assignment changes.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}: use one of {INITS}")
    v = values.detach().reshape(-1).double()
    if k >= v.numel():
        raise ConfigError(f"{k} clusters for {v.numel()} weights: use fewer bits (clusters must be fewer than weights)")
    c = _init(v, k, init, seed)
    assign = None
    for _ in range(iters):
        c = c.sort().values
        new = torch.searchsorted((c[1:] + c[:-1]) / 2, v)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, v)
        counts = torch.bincount(assign, minlength=k)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
    return c, assign


def _bits_for(m: nn.Module, cfg: ClusterConfig) -> int:
    is_conv = isinstance(m, nn.modules.conv._ConvNd)
    return cfg.conv_bits if is_conv and cfg.conv_bits is not None else cfg.bits


def _weight_id(m: nn.Module) -> int:
    """Identity of a layer's stored weight (a parametrized weight is recomputed on every access)."""
    return id(m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight)


def _selected(model: nn.Module, cfg: ClusterConfig) -> list[tuple[str, nn.Module]]:
    excluded = match_scopes(model, cfg.exclude)  # a pattern matching nothing raises
    chosen = match_scopes(model, cfg.layers) if cfg.layers else None
    users: dict[int, int] = {}
    layers = []
    for name, m in model.named_modules():  # a module used twice is listed once
        if not isinstance(m, PRUNABLE):
            continue
        users[_weight_id(m)] = users.get(_weight_id(m), 0) + 1
        if not is_excluded(name, excluded) and (chosen is None or is_excluded(name, chosen)):
            layers.append((name, m))
    if not layers:
        raise ConfigError("share.cluster selected no Conv/Linear layer: check 'layers' and 'exclude'")
    for name, m in layers:
        if shared_weights_of(m) is not None:
            raise ConfigError(f"layer {name!r} is already clustered: apply share.cluster once per layer, with the final bits")
        if users[_weight_id(m)] > 1:
            raise UnsupportedModuleError(
                f"layer {name!r} shares its weight with another module (tied weights); share.cluster cannot "
                "cluster tied weights yet: exclude it"
            )
        if parametrize.is_parametrized(m, "weight"):
            raise ConfigError(f"layer {name!r} has a parametrized weight (an unfolded pruning mask?): fold it first")
        if m.weight.dtype != torch.float32:
            raise UnsupportedModuleError(
                f"layer {name!r} ({type(m).__name__}) has {m.weight.dtype} weights; share.cluster needs float32: call model.float()"
            )
    bad = [name for name, m in layers if not bool(torch.isfinite(m.weight).all())]
    if bad:
        raise ConfigError(f"{'layer' if len(bad) == 1 else 'layers'} {', '.join(map(repr, bad))} "
                          f"{'has' if len(bad) == 1 else 'have'} NaN/Inf weights, which no k-means centroid can "
                          "represent: fix the model before clustering (retrain, or lower the learning rate)")
    return layers


class ClusteredModel(CompressedModel):
    """A share.cluster result: ``float_model`` with its clustered layers (``SharedWeights``
    parametrizations), stored in the Deep Compression format.

    ``forward`` is the float model's (it computes with the shared values), so it runs on the FP32
    runtimes and is its own float reference. Trainable: training trains the codebooks, and the
    stored form (codebooks + indices) stays exact.
    """

    runtime_kind = "float"
    trainable = True

    def __init__(self, float_model: nn.Module) -> None:
        super().__init__()
        self.float_model = float_model

    def forward(self, *args, **kwargs):
        return self.float_model(*args, **kwargs)

    def float_reference(self) -> nn.Module:
        return self.float_model

    def storage_tensors(self) -> dict[str, torch.Tensor]:
        """Non-clustered tensors as in the float model's state dict + one Deep Compression blob of
        the clustered layers (see ``effdl.compress.share.deep_compression``)."""
        from .deep_compression import storage_tensors

        return storage_tensors(self.float_model)


def unwrap(model: nn.Module) -> nn.Module:
    """The float model of a ClusteredModel (where its clustered layers live); any other model as is."""
    return model.float_model if isinstance(model, ClusteredModel) else model


@torch.no_grad()
def refresh(model: nn.Module) -> None:
    """Copy each clustered layer's current weight into its ``original`` (dense copy); ``model``: a
    ClusteredModel or its float model."""
    for _, m, _ in clustered_layers(model):
        m.parametrizations.weight.original.copy_(m.weight)


def _histogram(name: str, values: torch.Tensor, centroids: torch.Tensor) -> dict:
    counts, edges = np.histogram(values.double().numpy(), bins=HIST_BINS)
    return {"layer": name, "edges": edges.tolist(), "counts": counts.tolist(),
            "centroids_kmeans": centroids.double().tolist()}


def _attach_record(model: nn.Module, new: dict) -> None:
    """The storage record of every clustered layer (earlier share.cluster steps included) and the
    histogram of the largest one seen so far, with the centroids it has now."""
    from .deep_compression import storage_record

    rec = storage_record(model)
    earlier = records(model).get(ClusterRecord.key)
    old = earlier.histogram.model_dump() if earlier is not None else None
    hist = dict(max((h for h in (old, new) if h), key=lambda h: rec["layers"].get(h["layer"], {}).get("params", -1)))
    layer = dict(unwrap(model).named_modules())[hist["layer"]]
    hist["centroids"] = shared_weights_of(layer).codebook.detach().double().tolist()
    attach(model, ClusterRecord(**rec, histogram=hist))


def _needs(cfg: ClusterConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 else "nothing"


@register("share.cluster", ClusterConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"), example=lambda: ClusterConfig(iters=5))
def cluster(model: nn.Module, cfg: ClusterConfig, task) -> ClusteredModel:
    """Weight sharing: k-means of each layer's non-zero weights into 2**bits values (+ fine-tuning)."""
    # an earlier share.cluster step (other layers: per-layer bits) is extended, not refused
    out = model if isinstance(model, ClusteredModel) else None
    if out is None:
        refuse_quantized(model, "share.cluster")
    model = unwrap(model)
    layers = _selected(model, cfg)
    plans, hist = [], None
    largest = max(layers, key=lambda nm: nm[1].weight.numel())[0]  # first of the largest on a tie
    for name, m in layers:
        w = m.weight.detach()
        mask = w != 0
        k = 1 << _bits_for(m, cfg)
        nnz = int(mask.sum())
        if k >= nnz:
            raise ConfigError(
                f"layer {name!r} has {nnz} non-zero weights, not more than its {k} clusters: "
                f"lower bits (or conv_bits), or exclude {name!r}"
            )
        centroids, assign = kmeans_1d(w[mask], k, cfg.init, cfg.iters, cfg.seed)
        if name == largest:
            hist = _histogram(name, w[mask], centroids)
        indices = torch.zeros(w.shape, dtype=torch.uint8)
        indices[mask] = assign.to(torch.uint8)
        plans.append((m, SharedWeights(centroids.to(w.dtype), indices, mask, cfg.huffman, cfg.index_bits)))
    for m, p in plans:
        parametrize.register_parametrization(m, "weight", p, unsafe=True)
        m.parametrizations.weight.original.requires_grad_(False)  # never read: keep it out of training
    out = ClusteredModel(model) if out is None else out
    refresh(out)
    if cfg.finetune_epochs > 0:
        task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr)
        refresh(out)
    _attach_record(out, hist)
    return out.eval()
