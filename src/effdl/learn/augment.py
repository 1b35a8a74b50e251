"""learn.augment: training with data augmentation and soft targets.

Every augmentation maps a batch (x, targets) to a new batch, where targets are per-class
probabilities (one-hot, smoothed or mixed), so one soft cross-entropy trains them all:
- random shift (random crop of the zero-padded input; the classic "pad 4, crop" of CIFAR training);
- cutout (DeVries & Taylor 2017): one box per input zeroed, its centre uniform over the input
  and the box clipped at the border;
- mixup (Zhang et al. 2018): x = lam x_i + (1 - lam) x_j, targets mixed with the same lam,
  lam ~ Beta(a, a);
- cutmix (Yun et al. 2019): a box of area (1 - lam) pasted from x_j; lam is then recomputed as
  the fraction of the input actually kept (the box is clipped at the border), and the targets
  are mixed with that lam;
- label smoothing (Szegedy et al. 2016): target = (1 - eps) one_hot + eps / K.
Spatial augmentations act on every dimension after (batch, channels): images and 1-D signals.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..core.config import TechniqueConfig
from ..core.errors import ConfigError
from ..core.registry import register
from ..core.forms import refuse_quantized


class AugmentFields(TechniqueConfig):
    """The augmentation settings, shared by every technique that trains on augmented batches."""

    shift: int = Field(0, ge=0, description="random shift: pad by this many zeros per side, crop back at random")
    cutout: int = Field(0, ge=0, description="cutout: side of the zeroed box (0 = off)")
    mixup: float | None = Field(None, gt=0.0, description="mixup Beta(a, a) parameter a > 0 (None = off)")
    cutmix: float | None = Field(None, gt=0.0, description="cutmix Beta(a, a) parameter a > 0 (None = off); "
                                 "with mixup too, each batch uses one of the two at random")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing eps in [0, 1)")

    def augmenting(self) -> bool:
        return bool(self.shift or self.cutout or self.mixup or self.cutmix or self.label_smoothing)


class AugmentConfig(AugmentFields):
    """Train (or fine-tune) the model on augmented batches with soft targets."""

    epochs: float = Field(5.0, gt=0.0, description="training epochs (fractions allowed)")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (AdamW, cosine schedule)")


def _spatial(x: torch.Tensor, what: str) -> tuple[int, ...]:
    if x.ndim < 3:
        raise ConfigError(f"{what} needs inputs shaped (batch, channels, ...spatial), got {tuple(x.shape)}: "
                          "turn it off for flat feature vectors")
    return tuple(x.shape[2:])


def box_mask(centers: torch.Tensor, sizes, spatial: tuple[int, ...]) -> torch.Tensor:
    """(N, *spatial) bool, True inside each input's box: side ``sizes[d]`` centred on
    ``centers[n, d]`` (the box starts ``size // 2`` before the centre), clipped at the border."""
    n = centers.shape[0]
    mask = torch.ones((n,) + (1,) * len(spatial), dtype=torch.bool)
    for d, (extent, size) in enumerate(zip(spatial, sizes)):
        lo = (centers[:, d] - int(size) // 2).clamp(0, extent)
        hi = (centers[:, d] - int(size) // 2 + int(size)).clamp(0, extent)
        ar = torch.arange(extent)
        inside = (ar[None, :] >= lo[:, None]) & (ar[None, :] < hi[:, None])  # (N, extent)
        shape = [n] + [1] * len(spatial)
        shape[1 + d] = extent
        mask = mask & inside.view(shape)
    return mask


def _random_centers(n: int, spatial: tuple[int, ...], generator=None) -> torch.Tensor:
    return torch.stack([torch.randint(0, e, (n,), generator=generator) for e in spatial], dim=1)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each input zero-padded by ``pad`` on every spatial side, then cropped back at a random offset."""
    spatial = _spatial(x, "random shift")
    if pad == 0:
        return x
    xp = F.pad(x, [pad] * (2 * len(spatial)))
    offsets = torch.randint(0, 2 * pad + 1, (x.shape[0], len(spatial)), generator=generator)
    out = torch.empty_like(x)
    for i, off in enumerate(offsets.tolist()):
        out[i] = xp[(i, slice(None), *(slice(o, o + e) for o, e in zip(off, spatial)))]
    return out


def cutout(x: torch.Tensor, size: int, centers: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size``-sided box per input (``centers``: (N, spatial dims) ints; random if None)."""
    spatial = _spatial(x, "cutout")
    if size == 0:
        return x
    if centers is None:
        centers = _random_centers(x.shape[0], spatial, generator)
    mask = box_mask(centers, [size] * len(spatial), spatial)
    return x.masked_fill(mask.unsqueeze(1), 0.0)


def smooth_targets(y: torch.Tensor, num_classes: int, eps: float = 0.0) -> torch.Tensor:
    """(N, K) targets: (1 - eps) * one_hot(y) + eps / K."""
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"label smoothing must be in [0, 1), got {eps}: use e.g. 0.1")
    return F.one_hot(y.long(), num_classes).float() * (1.0 - eps) + eps / num_classes


def _beta(alpha: float, what: str) -> float:
    if alpha <= 0:
        raise ConfigError(f"{what} alpha must be > 0, got {alpha}: use e.g. 0.2 for mixup, 1.0 for cutmix")
    return float(torch.distributions.Beta(float(alpha), float(alpha)).sample())


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float, *, lam: float | None = None,
          perm: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """(x_mixed, targets_mixed, lam) with lam ~ Beta(alpha, alpha) unless given."""
    lam = _beta(alpha, "mixup") if lam is None else float(lam)
    perm = torch.randperm(x.shape[0], generator=generator) if perm is None else perm
    return lam * x + (1.0 - lam) * x[perm], lam * targets + (1.0 - lam) * targets[perm], lam


def cutmix(x: torch.Tensor, targets: torch.Tensor, alpha: float, *, lam: float | None = None,
           perm: torch.Tensor | None = None, center: torch.Tensor | None = None,
           generator: torch.Generator | None = None):
    """(x_mixed, targets_mixed, lam): one box of area ~(1 - lam) per batch pasted from x[perm];
    the returned lam is the kept fraction after clipping, which also weighs the targets."""
    spatial = _spatial(x, "cutmix")
    lam = _beta(alpha, "cutmix") if lam is None else float(lam)
    perm = torch.randperm(x.shape[0], generator=generator) if perm is None else perm
    side = math.sqrt(1.0 - lam)
    sizes = [round(e * side) for e in spatial]
    if center is None:
        center = _random_centers(1, spatial, generator)[0]
    mask = box_mask(center.view(1, -1), sizes, spatial)  # (1, *spatial), the same box for the batch
    kept = 1.0 - float(mask.sum()) / math.prod(spatial)
    out = torch.where(mask.unsqueeze(1), x[perm], x)
    return out, kept * targets + (1.0 - kept) * targets[perm], kept


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def augment_batch(cfg: AugmentFields, x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """(x_aug, soft targets) for one batch, drawing from torch's global RNG (Task.train seeds it)."""
    targets = smooth_targets(y, num_classes, cfg.label_smoothing)
    if cfg.shift:
        x = random_shift(x, cfg.shift)
    if cfg.cutout:
        x = cutout(x, cfg.cutout)
    mixers = [m for m in ("mixup", "cutmix") if getattr(cfg, m) is not None]
    if mixers:
        which = mixers[int(torch.randint(0, len(mixers), (1,)))]
        fn = mixup if which == "mixup" else cutmix
        x, targets, _ = fn(x, targets, getattr(cfg, which))
    return x, targets


@register("learn.augment", AugmentConfig, needs="training", tasks=("classification",), models=("cnn", "mlp"), example=lambda: AugmentConfig(epochs=0.25))
def augment(model: nn.Module, cfg: AugmentConfig, task) -> nn.Module:
    """Train on augmented batches (shift, cutout, mixup, cutmix) with soft (optionally smoothed) targets."""
    refuse_quantized(model, "learn.augment")
    k = task.num_classes

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xa, t = augment_batch(cfg, x, y, k)
        return soft_cross_entropy(m(xa), t)

    return task.train(model, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, keep_sparsity=True)
