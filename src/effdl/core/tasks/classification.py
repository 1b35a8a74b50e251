"""Classification of tensor inputs (images, 1-D signals, any fixed-shape tensor) into classes."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError, DataError, ModelError
from ..task import Batch, LabelledTask, Predictor, QualityReference, check_forward, eval_mode_outputs

SPLITS = ("train", "val", "test")
#: the linear probe's limits: inputs with more features, or train examples beyond the first this many, are not used
PROBE_FEATURES, PROBE_EXAMPLES = 4096, 20000


class _Floats:
    """A DataLoader's (x, y) batches as (float32, int64); re-iterable like the loader."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self):
        for x, y in self.loader:
            yield x.float(), y.long()

    def __len__(self) -> int:
        return len(self.loader)


class Classification(LabelledTask):
    """Classification of fixed-shape tensor inputs into ``num_classes``; metric: accuracy."""

    kind = "classification"
    output_kind = "logits"

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
        x0 = train[0][0]
        if not isinstance(x0, torch.Tensor):
            raise DataError(f"Classification takes tensor inputs, but the train split's first item holds a "
                            f"{type(x0).__name__}: for text use TextClassification (--data sentiment) or return tensors")
        self.model = model
        self.splits = {"train": train, "val": val, "test": test if test is not None else val}
        self.batch_size = batch_size
        self.seed = seed
        self.input_shape = tuple(x0.shape)
        self._num_classes = num_classes or int(max(int(train[i][1]) for i in range(len(train)))) + 1
        check_forward(self, model, self.check_logits)

    def with_train_subset(self, n: int, seed: int = 0) -> "Classification":
        """A copy whose train split is ``n`` class-balanced examples (round robin over classes)."""
        train = self.splits["train"]
        if n > len(train):
            raise ConfigError(f"asked for {n} training examples but the train split has {len(train)}: use at most {len(train)}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=g).tolist()
        by_class: dict[int, list[int]] = {}
        for i in order:
            by_class.setdefault(int(train[i][1]), []).append(i)
        picked: list[int] = []
        while len(picked) < n:
            for c in sorted(by_class):
                if by_class[c] and len(picked) < n:
                    picked.append(by_class[c].pop())
        new = self.with_model(self.model)
        new.splits = {**self.splits, "train": Subset(train, picked)}
        new.batch_size = min(self.batch_size, n)
        new.seed = seed
        return new

    # -- data -------------------------------------------------------------------------------------
    def _split(self, split: str) -> Dataset:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; use one of {list(self.splits)}")
        return self.splits[split]

    def batches(self, split: str, batch_size: int | None = None, *, shuffle: bool = False,
                seed: int | None = None) -> Iterable[Batch]:
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return _Floats(DataLoader(self._split(split), batch_size=batch_size or self.batch_size, shuffle=shuffle,
                                  generator=g))

    def num_examples(self, split: str) -> int:
        return len(self._split(split))

    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        ds = self._split(split)
        return torch.stack([ds[i % len(ds)][0] for i in range(batch_size)]).float()

    # -- quality and training ---------------------------------------------------------------------
    def logits(self, predictor: Predictor | nn.Module, split: str = "test", batch_size: int = 256):
        """(logits, labels) over a whole split. Modules are put in eval mode for the call."""
        data = list(self.batches(split, batch_size))
        outs = list(eval_mode_outputs(predictor, [x for x, _ in data]))
        return torch.cat(outs), torch.cat([y for _, y in data])

    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        logits, y = self.logits(predictor, split)
        return classification_metrics(logits, y, self.num_classes)

    def reference_quality(self, split: str = "val") -> QualityReference | None:
        """Chance, and a ridge-regression probe: one-hot labels regressed on the flattened train
        inputs (exactly as the model receives them), closed form, accuracy on ``split``. Any
        preprocessing the model expects is an affine map the probe absorbs, so it measures what the
        inputs support whatever their scaling."""
        ref = super().reference_quality(split)
        if math.prod(self.input_shape) > PROBE_FEATURES:
            return ref
        x, y = self._flat("train", PROBE_EXAMPLES)
        mu = x.mean(0)
        xc = x - mu
        onehot = torch.nn.functional.one_hot(y, self.num_classes).double()
        gram = xc.T @ xc
        ridge = 1e-2 * float(gram.diagonal().mean()) + 1e-12  # scale-free: a fixed fraction of the mean feature energy
        w = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ (onehot - onehot.mean(0)))
        xv, yv = self._flat(split)
        pred = ((xv - mu) @ w).argmax(1)
        acc = float((pred == yv).double().mean())
        return QualityReference(ref.chance, ref.noise, ref.chance_what, probe=acc,
                                probe_what=f"a linear (ridge) probe on the same inputs, fitted on {len(y)} train examples")

    def _flat(self, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, n = [], [], 0
        for x, y in self.batches(split, 1024):
            xs.append(x.reshape(len(x), -1).double())
            ys.append(y)
            n += len(x)
            if limit is not None and n >= limit:
                break
        return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


#: the name effdl used for Classification before text tasks existed
ImageClassification = Classification


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
