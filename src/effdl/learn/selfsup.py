"""learn.simclr: SimCLR-style self-supervised pre-training, then fine-tuning with few labels.

Pre-training (Chen et al. 2020) uses the train split's images only, never its labels: two random
views of each image (random affine crop for images, random shift for 1-D signals, then cutout)
go through the model up to its classifier (the input of the last Linear layer is the
representation h), a projection head g (Linear-ReLU-Linear) maps h to z, and the NT-Xent loss
pulls the two views of an image together against the other 2N - 2 views of the batch:

    l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau),

averaged over all 2N ordered positive pairs, sim = cosine similarity. The projection head is
dropped afterwards. Fine-tuning then trains on ``labels`` labelled train examples, class-balanced
("full": every weight; "linear": the classifier only, a linear probe).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field


from ..core.config import TechniqueConfig
from ..core.errors import ConfigError, UnsupportedModuleError
from ..core.registry import register
from ..core.forms import refuse_quantized
from .augment import cutout, random_shift


class SimCLRConfig(TechniqueConfig):
    """Contrastive pre-training on unlabelled train images, then fine-tuning with few labels."""

    epochs: float = Field(20.0, gt=0.0, description="pre-training epochs over the train images")
    lr: float = Field(1e-3, gt=0.0, description="pre-training learning rate (AdamW, cosine)")
    # 0.2 rather than the paper's 0.5: on the MNIST subset (LeNet-5, batch 256) tau 0.5 left the
    # representation far weaker (linear probe with 100 labels: 0.70 vs 0.87 after 60 epochs).
    temperature: float = Field(0.2, gt=0.0, description="NT-Xent temperature tau (> 0)")
    batch_size: int = Field(256, ge=2, description="pre-training batch (2N views; larger = more negatives)")
    projection_dim: int = Field(64, ge=1, description="output size of the projection head")
    cutout: int = Field(8, ge=0, description="cutout box side in the views (0 = off)")
    labels: int | None = Field(None, ge=1, description="labelled examples for fine-tuning, class-balanced "
                               "(None = the whole train split)")
    finetune: Literal["full", "linear"] = Field("full", description="'full' fine-tuning or 'linear' probe")
    finetune_steps: int = Field(300, ge=0, description="fine-tuning optimizer steps (0 = pre-training only)")
    finetune_lr: float = Field(1e-3, gt=0.0, description="fine-tuning learning rate")
    seed: int = Field(0, ge=0, description="seed of the labelled subset and of training")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over N positive pairs (z1[i], z2[i]); embeddings are L2-normalised here."""
    if temperature <= 0:
        raise ConfigError(f"NT-Xent temperature must be > 0, got {temperature}: use e.g. 0.5")
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ConfigError(f"NT-Xent needs two (N, D) batches of the same shape with N >= 2, got "
                          f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))  # k != i
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, positive)


def classifier_head(model: nn.Module) -> nn.Linear:
    """The last nn.Linear of the model: its input is the representation being pre-trained."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnsupportedModuleError(
            f"learn.simclr needs a model ending in an nn.Linear classifier; {type(model).__name__} has none: "
            "add a Linear head")
    return linears[-1]


def random_affine(x: torch.Tensor, scale=(0.7, 1.1), degrees: float = 15.0, translate: float = 0.15) -> torch.Tensor:
    """Per-image random zoom, rotation and translation (bilinear, zero fill) for (N, C, H, W)."""
    n = x.shape[0]
    s = torch.empty(n).uniform_(*scale)
    a = torch.empty(n).uniform_(-degrees, degrees) * math.pi / 180
    t = torch.empty(n, 2).uniform_(-translate, translate) * 2  # grid coordinates span [-1, 1]
    theta = torch.stack([torch.stack([torch.cos(a) / s, -torch.sin(a) / s, t[:, 0]], 1),
                         torch.stack([torch.sin(a) / s, torch.cos(a) / s, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def view(x: torch.Tensor, cut: int) -> torch.Tensor:
    """One random view: affine crop for images, shift by a sixth of the length for 1-D signals."""
    if x.ndim == 4:
        x = random_affine(x)
    elif x.ndim == 3:
        x = random_shift(x, max(1, x.shape[-1] // 6))
    else:
        raise ConfigError(f"learn.simclr needs image or signal inputs (N, C, ...), got {tuple(x.shape)}")
    return cutout(x, min(cut, *x.shape[2:]))


class _Contrastive(nn.Module):
    """Model + projection head, so Task.train optimises both; the head is dropped afterwards."""

    def __init__(self, model: nn.Module, width: int, projection_dim: int) -> None:
        super().__init__()
        self.model = model
        self.proj = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection_dim))
        self._h: torch.Tensor | None = None
        self._hook = classifier_head(model).register_forward_pre_hook(self._keep)

    def _keep(self, _module, inputs) -> None:
        self._h = inputs[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        return self.proj(self._h.flatten(1))

    def close(self) -> nn.Module:
        self._hook.remove()
        return self.model


def pretrain(model: nn.Module, task, cfg: SimCLRConfig) -> tuple[nn.Module, list[float]]:
    """Contrastive pre-training of ``model`` in place; returns (model, per-step losses)."""
    head = classifier_head(model)
    wrapper = _Contrastive(model, head.in_features, cfg.projection_dim)
    losses: list[float] = []

    def loss_fn(m: _Contrastive, x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:  # labels unused
        if x.shape[0] < 2:  # a last batch of one image has no negatives: a zero step
            return sum(p.sum() for p in m.proj.parameters()) * 0.0
        loss = nt_xent(m.embed(view(x, cfg.cutout)), m.embed(view(x, cfg.cutout)), cfg.temperature)
        losses.append(float(loss.detach()))
        return loss

    try:
        task.train(wrapper, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, batch_size=cfg.batch_size,
                   seed=cfg.seed, keep_sparsity=True)
    finally:
        wrapper.close()
    return model.eval(), losses


def labelled_subset(task, n: int | None, seed: int = 0):
    """The task with ``n`` class-balanced train examples (None: the whole train split)."""
    return task if n is None else task.with_train_subset(n, seed)


def finetune(model: nn.Module, task, cfg: SimCLRConfig) -> nn.Module:
    """Train on ``cfg.labels`` labelled examples for ``cfg.finetune_steps`` steps, in place."""
    if cfg.finetune_steps == 0:
        return model.eval()
    sub = labelled_subset(task, cfg.labels, cfg.seed)
    steps_per_epoch = sub.steps_per_epoch()
    frozen = []
    if cfg.finetune == "linear":
        head = classifier_head(model)
        keep = {id(p) for p in head.parameters()}
        frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
        for p in frozen:
            p.requires_grad_(False)
    try:
        sub.train(model, epochs=cfg.finetune_steps / steps_per_epoch, lr=cfg.finetune_lr, seed=cfg.seed)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return model.eval()


@register("learn.simclr", SimCLRConfig, needs="training", tasks=("classification",), models=("cnn", "mlp"), example=lambda: SimCLRConfig(epochs=0.25, batch_size=64, projection_dim=8, finetune_steps=1))
def simclr(model: nn.Module, cfg: SimCLRConfig, task) -> nn.Module:
    """SimCLR pre-training (NT-Xent on two views of unlabelled train images), then fine-tuning with few labels."""
    refuse_quantized(model, "learn.simclr")
    pretrain(model, task, cfg)
    return finetune(model, task, cfg)
