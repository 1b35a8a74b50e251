"""Task: the contract between a model, its data and everything effdl does to the model.

Techniques, runtimes, measurement and the optimizer ask a Task for exactly these things and nothing
else (no technique imports a concrete Task class or touches a dataset):

- ``metric``: the primary quality metric and its direction; ``evaluate(predictor, split)`` -> the
  task's metrics on a split. A predictor is any callable ``input batch -> output`` (a module, an
  ONNX Runtime session wrapper), so every lowering is evaluated exactly like the eager model.
- ``batches(split, ...)``: ``(inputs, targets)`` batches; ``loss(model, inputs, targets)`` the
  training objective; ``train(model, ...)``: the one training loop of the package, with hooks
  (a replacement loss for distillation, extra loss terms for hints, per-step callbacks for masks,
  schedules and regrowth).
- ``calibration_batches(n)``: real input batches of the train split (never the test split).
- ``example_input(b)`` and ``dynamic_axes``: real inputs and which of their axes may vary (batch;
  sequence for sequence models). ``output_kind`` says how outputs compare (parity checks).
- ``with_model(model)``: the same task around another model.
- ``reference_quality(split)``: what the data supports without the model (a predictor that ignores
  the input; a linear probe where cheap), so a baseline that is no better can be stopped early.

``kind`` names the task family (``TASK_KINDS``); techniques that only make sense for some families
declare them at registration (``core.registry.register(..., tasks=...)``).
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import progress
from .errors import ConfigError, DataError, ModelError

Predictor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

TASK_KINDS = ("classification", "text-classification", "sentence-embedding", "causal-lm")
#: how outputs are compared: class logits [B, C] (top-1 agreement), per-token logits [B, T, V]
#: (top-1 per token), embeddings [B, D] (cosine similarity)
OUTPUT_KINDS = ("logits", "token-logits", "embedding")


@dataclass(frozen=True)
class MetricSpec:
    """A task's primary quality metric and its direction."""

    name: str
    higher_is_better: bool = True

    def drop(self, baseline: float, value: float, relative: bool = False) -> float:
        """How much worse ``value`` is than ``baseline`` (positive = worse), absolute or relative."""
        d = (baseline - value) if self.higher_is_better else (value - baseline)
        return d / abs(baseline) if relative and baseline != 0 else d


@dataclass(frozen=True)
class QualityReference:
    """What the data supports without the model, on one split, in the task's primary metric.

    ``chance``: the quality of a predictor that ignores its input (``chance_what`` says which), known
    to within ``noise`` (one standard error of the metric on this split; 0 where not meaningful).
    ``probe``: the quality of a linear model fitted on the train split's inputs as they are fed to
    the model (``probe_what``), or None where no such probe is cheap.
    """

    chance: float
    noise: float
    chance_what: str
    probe: float | None = None
    probe_what: str = ""


class TrainHook:
    """Per-step callbacks of :meth:`Task.train`; override what you need.

    ``before_step`` runs before the forward pass (schedules that prune at step t), ``after_backward``
    with dense gradients, before the optimizer step (mask the gradients, regrow connections; return
    True to skip this optimizer step), ``after_step`` after the update (re-apply masks, snapshots).
    """

    def before_step(self, step: int, model: nn.Module) -> None:
        pass

    def after_backward(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        return False

    def after_step(self, step: int, model: nn.Module) -> None:
        pass


class _SparsityKeeper(TrainHook):
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
    def after_step(self, step: int, model: nn.Module) -> None:
        for w, mask in self.masks:
            w.masked_fill_(~mask, 0.0)  # +0.0, so compact storage sees a zero


def as_output(out) -> torch.Tensor:
    """A predictor's raw output (tensor, numpy array, or the first of a tuple/list) as float32."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    return out.float()


class Task(ABC):
    """The contract every task implements. ``model`` is the reference (uncompressed) model."""

    kind: ClassVar[str] = ""
    output_kind: ClassVar[str] = "logits"
    model: nn.Module
    #: training batch size and the seed of the data order
    batch_size: int = 64
    seed: int = 0
    #: real inputs a lowering's parity check compares on (fewer for expensive sequence models)
    parity_samples: int = 256

    # -- quality ----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def metric(self) -> MetricSpec:
        """The primary metric ``evaluate`` reports, and whether higher is better."""

    @abstractmethod
    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        """The task's metrics of ``predictor`` on ``split`` ("train", "val" or "test")."""

    # -- data -------------------------------------------------------------------------------------
    @abstractmethod
    def batches(self, split: str, batch_size: int | None = None, *, shuffle: bool = False,
                seed: int | None = None) -> Iterable[Batch]:
        """``(inputs, targets)`` batches of ``split``; targets are what :meth:`loss` takes.

        Re-iterable: with ``shuffle`` each pass draws a new order from one generator seeded with
        ``seed`` (default: the task's), so two calls give the same sequence of epochs."""

    @abstractmethod
    def num_examples(self, split: str) -> int:
        """How many examples ``batches(split)`` yields in one pass."""

    @abstractmethod
    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        """``batch_size`` real inputs (repeated if the split is shorter)."""

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Input axes that may vary between calls: the batch, and the sequence for sequence models."""
        return {0: "batch"}

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[torch.Tensor]:
        """``n`` real input batches from the train split (never the test split), fixed order."""
        if n < 1:
            raise ConfigError(f"calibration needs at least 1 batch, got {n}")
        out = []
        for x, _ in self.batches("train", batch_size, shuffle=True):
            out.append(x)
            if len(out) == n:
                break
        return out

    def inputs(self, n: int, splits: Sequence[str] = ("val", "test")) -> torch.Tensor:
        """At least ``n`` real inputs, from the first split that has them (repeated if all are short)."""
        xs, have = [], 0
        for split in splits:
            for x, _ in self.batches(split, 256):
                xs.append(x)
                have += x.shape[0]
                if have >= n:
                    return torch.cat(xs)[:n]
        if not xs:
            raise DataError("the task has no validation inputs")
        pool = torch.cat(xs)
        reps = math.ceil(n / pool.shape[0])
        return pool.repeat(reps, *([1] * (pool.dim() - 1)))[:n]

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        return max(1, math.ceil(self.num_examples("train") / (batch_size or self.batch_size)))

    # -- training ---------------------------------------------------------------------------------
    @abstractmethod
    def output_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task's training objective from the model's outputs on one batch."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task's training objective on one batch."""
        return self.output_loss(model(inputs), targets)

    def train(
        self,
        model: nn.Module,
        *,
        epochs: float = 1.0,
        steps: int | None = None,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        loss_fn: LossFn | None = None,
        loss_terms: Sequence[LossFn] = (),
        hooks: Sequence[TrainHook] = (),
        keep_sparsity: bool = True,
        batch_size: int | None = None,
        seed: int | None = None,
        data_seed: int | None = None,
    ) -> nn.Module:
        """Train ``model`` in place for ``steps`` optimizer steps (default: ``epochs`` passes over the
        train split, fractions allowed) and return it in eval mode.

        ``loss_fn(model, x, y)`` replaces :meth:`loss` (distillation plugs in here); each of
        ``loss_terms`` is added to it (hints, regularisers). ``hooks`` get per-step callbacks.
        Existing exact zeros in Conv/Linear weights stay zero when ``keep_sparsity`` (pruned models
        stay pruned). ``seed`` seeds torch's generator, ``data_seed`` the data order (default: the
        task's seed).
        """
        bs = batch_size or self.batch_size
        if steps is None:
            if epochs <= 0:
                return model.eval()
            steps = max(1, math.ceil(epochs * self.steps_per_epoch(bs)))
        if steps <= 0:
            return model.eval()
        torch.manual_seed(self.seed if seed is None else seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "adam":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        else:
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
        hooks = ([_SparsityKeeper(model)] if keep_sparsity else []) + list(hooks)
        objective = loss_fn or self.loss
        data = self.batches("train", bs, shuffle=True, seed=data_seed)
        per_epoch = self.steps_per_epoch(bs)
        model.train()
        step = 0
        while step < steps:
            for x, y in data:
                for h in hooks:
                    h.before_step(step, model)
                opt.zero_grad(set_to_none=True)
                loss = objective(model, x, y)
                for term in loss_terms:
                    loss = loss + term(model, x, y)
                if not torch.isfinite(loss):
                    raise ModelError(f"training loss became {loss.item()} at step {step}: lower the learning rate")
                loss.backward()
                skip = False
                for h in hooks:
                    skip = bool(h.after_backward(step, model, opt)) or skip
                if not skip:
                    opt.step()
                if sched is not None:
                    sched.step()
                for h in hooks:
                    h.after_step(step, model)
                step += 1
                progress.report("train", step, steps)
                if step % per_epoch == 0 or step >= steps:  # a search's pruner may stop the trial here
                    progress.epoch_trained(self, model, step / per_epoch)
                if step >= steps:
                    break
        return model.eval()

    # -- copies -----------------------------------------------------------------------------------
    def reference_quality(self, split: str = "val") -> QualityReference | None:
        """What ``split`` supports without the model (see :class:`QualityReference`); None when the
        task knows no such reference."""
        return None

    def with_model(self, model: nn.Module) -> "Task":
        """The same task (data, settings, shared caches) around ``model``."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.model = model
        return new

    def with_train_subset(self, n: int, seed: int = 0) -> "Task":
        """The same task whose train split is ``n`` of its examples (few-label fine-tuning)."""
        raise ConfigError(f"{type(self).__name__} cannot take a subset of its train split")


class LabelledTask(Task):
    """A task whose targets are class ids (classification of tensors or of text): outputs are logits
    of shape (batch, num_classes), the metric is accuracy, the loss cross-entropy."""

    _num_classes: int
    #: what to do when the model's outputs are not (batch, num_classes) logits
    output_fix: ClassVar[str] = "the model must return class logits"

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def metric(self) -> MetricSpec:
        return MetricSpec("accuracy", True)

    def output_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs, targets)

    def reference_quality(self, split: str = "val") -> QualityReference | None:
        """Chance: always predicting the split's most frequent class."""
        y = torch.cat([t for _, t in self.batches(split, 512)])
        counts = torch.bincount(y, minlength=self.num_classes)
        top = int(counts.argmax())
        p = float(counts[top]) / len(y)
        return QualityReference(chance=p, noise=math.sqrt(p * (1 - p) / len(y)),
                                chance_what=f"always predicting the most frequent class ({top})")

    def check_logits(self, out: torch.Tensor) -> None:
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise ModelError(f"the model outputs shape {tuple(out.shape)} but the data has {self.num_classes} "
                             f"classes: expected logits of shape (batch, {self.num_classes}); {self.output_fix}")


@contextlib.contextmanager
def kept_modes(model: nn.Module | None) -> Iterator[None]:
    """Every submodule's own train/eval flag is put back on exit (a caller may keep some in eval
    inside a train-mode model, so the root's flag alone is not enough)."""
    modes = [(m, m.training) for m in model.modules()] if model is not None else []
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def eval_mode_outputs(predictor: Predictor | nn.Module, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``predictor`` on each input batch as float32 outputs, one batch at a time; a module runs in
    eval mode, restored when the iteration ends."""
    module = predictor if isinstance(predictor, nn.Module) else None
    with kept_modes(module):
        if module is not None:
            module.eval()
        for x in batches:
            with torch.no_grad():
                yield as_output(predictor(x))


def check_forward(task: Task, model: nn.Module, check: Callable[[torch.Tensor], None]) -> None:
    """Run ``model`` on two real inputs, then on one; any failure is the user's model/data mismatch (ModelError).
    A model holding float16/bfloat16/float64 tensors is refused first, by name: its forward would
    fail on (or silently upcast) the float32 inputs, and a dtype error is not a shape problem."""
    other = [(n, t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_floating_point() and t.dtype != torch.float32]
    if other:
        name, dtype = other[0]
        raise ModelError(
            f"the model holds {str(dtype).removeprefix('torch.')} tensors ({name!r}"
            f"{f' and {len(other) - 1} more' if len(other) > 1 else ''}): effdl takes float32 models and makes the "
            "BF16/FP16 and INT8 forms itself (quantize.float, quantize.ptq), measuring each. Fix: pass model.float(), "
            "or float32 weights.")
    x = task.example_input(2)
    try:
        out = next(eval_mode_outputs(model, [x]))
    except Exception as exc:  # the user's model: report whatever its forward raised
        raise ModelError(
            f"the model's forward fails on the data's input shape {tuple(x.shape)} ({x.dtype}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Fix: build the model for this input or pick matching --data."
        ) from None
    check(out)
    # the batch axis is dynamic everywhere (batch-1 latency, exports): refuse a hard-coded batch size now
    try:
        one = next(eval_mode_outputs(model, [x[:1]]))
        failure = None if one.shape[:1] == (1,) else f"it returns shape {tuple(one.shape)} for one sample"
    except Exception as exc:  # the user's model again
        failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if failure is not None:
        raise ModelError(
            f"the model runs on a batch of 2 but not on a batch of 1 ({failure}): a hard-coded batch size? effdl "
            "runs every batch size from 1 up. Fix: make forward work for any batch size (e.g. x.flatten(1), not "
            "x.reshape(2, -1))."
        )
