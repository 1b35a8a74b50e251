"""Task: the adapter between a model and its data.

Everything else (techniques, measurement, runtimes, the optimizer) talks to a Task, never to a
dataset directly. A Task knows how to evaluate a predictor (any callable batch -> logits, so a
lowered ONNX Runtime session is evaluated exactly like an eager module), how to train or fine-tune,
where calibration batches come from, and what a real example input looks like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError, ModelError

Predictor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


@dataclass(frozen=True)
class MetricSpec:
    """A task's primary quality metric and its direction."""

    name: str
    higher_is_better: bool = True

    def drop(self, baseline: float, value: float, relative: bool = False) -> float:
        """How much worse ``value`` is than ``baseline`` (positive = worse), absolute or relative."""
        d = (baseline - value) if self.higher_is_better else (value - baseline)
        return d / abs(baseline) if relative and baseline != 0 else d
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Task:
    """Interface every task implements. ``model`` is the reference (uncompressed) model."""

    model: nn.Module
    primary_metric: str = "accuracy"

    @property
    def metric(self) -> MetricSpec:
        return MetricSpec(self.primary_metric, True)

    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        raise NotImplementedError

    def train(self, model: nn.Module, *, epochs: float, **kw) -> nn.Module:
        raise NotImplementedError

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[torch.Tensor]:
        raise NotImplementedError

    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        raise NotImplementedError

    def with_model(self, model: nn.Module) -> "Task":
        raise NotImplementedError


class _SparsityKeeper:
    """Keeps exact zeros of already-sparse weights at zero through fine-tuning.

    Any technique that trains a pruned model (fine-tuning, distillation) must not regrow pruned
    weights; masks are taken from the weights at the start and re-applied after each step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.masks = []
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and isinstance(w, nn.Parameter):
                mask = w.detach() != 0
                if not bool(mask.all()):
                    self.masks.append((w, mask))

    @torch.no_grad()
    def apply(self) -> None:
        for w, mask in self.masks:
            w.masked_fill_(~mask, 0.0)  # +0.0, so compact storage sees a zero


def _as_logits(out) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.float()


class ImageClassification(Task):
    """Classification of fixed-shape inputs (images, 1-D signals) into ``num_classes``."""

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset,
        test: Dataset | None = None,
        *,
        num_classes: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, ds in (("train", train), ("val", val)):
            if ds is None or len(ds) == 0:
                raise DataError(f"the {name} split is empty: pass a non-empty torch Dataset")
        self.model = model
        self.splits = {"train": train, "val": val, "test": test if test is not None else val}
        self.batch_size = batch_size
        self.seed = seed
        x0, _ = train[0]
        self.input_shape = tuple(x0.shape)
        self.num_classes = num_classes or int(max(int(self.splits["train"][i][1]) for i in range(len(train)))) + 1
        self._check_forward(model)

    def with_model(self, model: nn.Module) -> "ImageClassification":
        new = object.__new__(ImageClassification)
        new.__dict__.update(self.__dict__)
        new.model = model
        return new

    def _check_forward(self, model: nn.Module) -> None:
        x = self.example_input(2)
        try:
            with torch.no_grad():
                was = model.training
                model.eval()
                out = _as_logits(model(x))
                model.train(was)
        except Exception as exc:  # any failure here is the user's model/data mismatch
            raise ModelError(
                f"the model's forward fails on the data's input shape {tuple(x.shape)}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                "Fix: build the model for this input shape or pick matching --data."
            ) from None
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise ModelError(
                f"the model outputs shape {tuple(out.shape)} but the data has {self.num_classes} "
                f"classes: the model must return logits of shape (batch, {self.num_classes})"
            )

    # -- data -------------------------------------------------------------------------------
    def loader(self, split: str, batch_size: int | None = None, shuffle: bool = False) -> DataLoader:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; use one of {list(self.splits)}")
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.splits[split], batch_size=batch_size or self.batch_size, shuffle=shuffle, generator=g)

    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        ds = self.splits[split]
        idx = [i % len(ds) for i in range(batch_size)]
        return torch.stack([ds[i][0] for i in idx]).float()

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[torch.Tensor]:
        """``n`` real batches from the train split (never the test split), fixed order."""
        if n < 1:
            raise ConfigError(f"calibration needs at least 1 batch, got {n}")
        out = []
        for x, _ in self.loader("train", batch_size, shuffle=True):
            out.append(x.float())
            if len(out) == n:
                break
        return out

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, predictor: Predictor | nn.Module, split: str = "test", batch_size: int = 256):
        """(logits, labels) over a whole split. Modules are put in eval mode for the call."""
        if isinstance(predictor, nn.Module):
            was = predictor.training
            predictor.eval()
        outs, labels = [], []
        try:
            for x, y in self.loader(split, batch_size):
                outs.append(_as_logits(predictor(x.float())))
                labels.append(y)
        finally:
            if isinstance(predictor, nn.Module):
                predictor.train(was)
        return torch.cat(outs), torch.cat(labels).long()

    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        logits, y = self.logits(predictor, split)
        return classification_metrics(logits, y, self.num_classes)

    # -- training -------------------------------------------------------------------------------
    def train(
        self,
        model: nn.Module,
        *,
        epochs: float = 1.0,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        loss_fn: LossFn | None = None,
        keep_sparsity: bool = True,
        batch_size: int | None = None,
        seed: int | None = None,
    ) -> nn.Module:
        """Train ``model`` in place for ``epochs`` (fractions allowed) and return it in eval mode.

        ``loss_fn(model, x, y)`` replaces cross-entropy (distillation plugs in here). Existing exact
        zeros in Conv/Linear weights stay zero when ``keep_sparsity`` (pruned models stay pruned).
        """
        if epochs <= 0:
            return model.eval()
        torch.manual_seed(self.seed if seed is None else seed)
        dl = self.loader("train", batch_size, shuffle=True)
        steps = max(1, math.ceil(epochs * len(dl)))
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "adam":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        else:
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
        keeper = _SparsityKeeper(model) if keep_sparsity else None
        loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
        model.train()
        step = 0
        while step < steps:
            for x, y in dl:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model, x.float(), y.long())
                if not torch.isfinite(loss):
                    raise ModelError(f"training loss became {loss.item()} at step {step}: lower the learning rate")
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if keeper is not None:
                    keeper.apply()
                step += 1
                if step >= steps:
                    break
        return model.eval()


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """accuracy, top-5 accuracy (top-k with k=min(5, classes)), macro precision/recall/F1."""
    pred = logits.argmax(1)
    k = min(5, num_classes)
    topk = logits.topk(k, 1).indices.eq(y[:, None]).any(1).float().mean().item()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    cm.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    tp = cm.diag()
    prec = torch.where(cm.sum(0) > 0, tp / cm.sum(0).clamp_min(1), torch.zeros_like(tp))
    rec = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-12), torch.zeros_like(tp))
    present = (cm.sum(1) + cm.sum(0)) > 0  # sklearn: labels seen in y or in the predictions
    return {
        "accuracy": pred.eq(y).float().mean().item(),
        f"top{k}": topk,
        "precision_macro": prec[present].mean().item(),
        "recall_macro": rec[present].mean().item(),
        "f1_macro": f1[present].mean().item(),
    }
