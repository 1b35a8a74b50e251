"""Text tasks: classification of texts, sentence embeddings, causal language modelling.

Every text model effdl handles is called with ONE tensor, int64 token ids [batch, seq]; the model
derives its attention mask from the pad id (``effdl.zoo.text``'s wrappers do), so every runtime
(eager, compile, ONNX Runtime, PT2E INT8) runs text models like any other.

Sequence length: each task pads or truncates every text to its ``seq_len`` (truncation keeps the
first tokens; how many texts were cut is in ``truncated``). A ``seq_len`` beyond the model's maximum
positions is refused. Exports keep both the batch and the sequence axis dynamic (``dynamic_axes``).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError, ModelError
from ..task import (Batch, LabelledTask, MetricSpec, Predictor, QualityReference, Task, check_forward,
                    eval_mode_outputs)
from .classification import classification_metrics

SPLITS = ("train", "val", "test")
#: evaluation groups texts by length in steps of this many tokens (see TokenTask._outputs)
BUCKET = 16


def tokenize(tokenizer, texts: Sequence[str], seq_len: int, pad_id: int) -> tuple[torch.Tensor, int]:
    """(ids [n, seq_len] int64 padded with ``pad_id``, how many texts were truncated)."""
    if not all(isinstance(t, str) for t in texts):
        bad = next(t for t in texts if not isinstance(t, str))
        raise DataError(f"text tasks take strings, got a {type(bad).__name__}: for tensors use Classification")
    enc = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
    ids = torch.full((len(enc), seq_len), pad_id, dtype=torch.int64)
    cut = 0
    for i, row in enumerate(enc):
        cut += len(row) > seq_len
        row = row[:seq_len]
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return ids, cut


class _Batches:
    """Re-iterable (ids, targets) batches over rows of a split; shuffled passes share one generator."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, make) -> None:
        self.n, self.batch_size, self.shuffle, self.make = n, batch_size, shuffle, make
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen) if self.shuffle else torch.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            yield self.make(order[i : i + self.batch_size])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class TokenTask(Task):
    """Shared machinery of the text tasks: token-id splits, batches, example inputs, copies."""

    output_kind = "logits"

    def __init__(self, model: nn.Module, ids: dict[str, torch.Tensor], *, pad_id: int, seq_len: int,
                 max_length: int | None, batch_size: int, seed: int) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be an nn.Module, got {type(model).__name__}")
        if max_length is not None and seq_len > max_length:
            raise ConfigError(f"seq_len={seq_len} is longer than the model's maximum of {max_length} positions: "
                              f"use seq_len <= {max_length} (effdl truncates texts to seq_len)")
        for split in ("train", "val"):
            if split not in ids or len(ids[split]) == 0:
                raise DataError(f"the {split} split is empty: the text task needs train and val texts")
        self.model = model
        self.ids = {s: ids.get(s, ids["val"]) for s in SPLITS}
        self.pad_id, self.seq_len, self.max_length = pad_id, seq_len, max_length
        self.batch_size, self.seed = batch_size, seed
        self._subset: torch.Tensor | None = None  # train rows kept by with_train_subset

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {0: "batch", 1: "sequence"}

    def _rows(self, split: str) -> torch.Tensor:
        if split not in self.ids:
            raise DataError(f"unknown split {split!r}; use one of {list(self.ids)}")
        return self.ids[split]

    def targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """Targets of rows ``idx`` of ``split`` (what ``output_loss`` takes)."""
        raise NotImplementedError

    def batches(self, split: str, batch_size: int | None = None, *, shuffle: bool = False,
                seed: int | None = None) -> Iterable[Batch]:
        rows = self._rows(split)
        return _Batches(len(rows), batch_size or self.batch_size, shuffle, self.seed if seed is None else seed,
                        lambda idx: (rows[idx], self.targets(split, idx)))

    def num_examples(self, split: str) -> int:
        return len(self._rows(split))

    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        rows = self._rows(split)
        return rows[[i % len(rows) for i in range(batch_size)]].clone()

    def inputs(self, n: int, splits: Sequence[str] = ("val", "test")) -> torch.Tensor:
        pool = torch.cat([self._rows(s) for s in splits])
        return pool[[i % len(pool) for i in range(n)]].clone()

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[torch.Tensor]:
        if n < 1:
            raise ConfigError(f"calibration needs at least 1 batch, got {n}")
        rows = self._rows("train")
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed))
        idx = [int(order[i % len(rows)]) for i in range(n * batch_size)]
        return list(rows[idx].split(batch_size))

    def with_train_subset(self, n: int, seed: int = 0) -> "TokenTask":
        rows = self._rows("train")
        if n > len(rows):
            raise ConfigError(f"asked for {n} training examples but the train split has {len(rows)}")
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n]
        new = self.with_model(self.model)
        new.ids = {**self.ids, "train": rows[keep]}
        new._subset = keep if self._subset is None else self._subset[keep]  # targets are looked up through it
        return new

    def _outputs(self, predictor: Predictor | nn.Module, rows: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Outputs of every row, in order. Rows are grouped by their length rounded up to BUCKET
        tokens and the trailing padding beyond it is cut: the model masks padding, so the outputs are
        the same, for a fraction of the work on short texts (and a few fixed shapes per split)."""
        lengths = (rows != self.pad_id).long().cumsum(1).argmax(1) + 1  # up to the last real token
        buckets = ((lengths + BUCKET - 1) // BUCKET * BUCKET).clamp(max=rows.shape[1])
        out: torch.Tensor | None = None
        for width in buckets.unique().tolist():
            idx = (buckets == width).nonzero().flatten()
            part = torch.cat(list(eval_mode_outputs(predictor, rows[idx, :width].split(batch_size))))
            if out is None:
                out = part.new_empty((len(rows),) + tuple(part.shape[1:]))
            out[idx] = part
        return out


class TextClassification(TokenTask, LabelledTask):
    """A text encoder + classification head over labelled texts; metric: accuracy (and macro F1)."""

    kind = "text-classification"
    output_kind = "logits"
    parity_samples = 64
    output_fix = "load the encoder with a classification head (load_text_model(..., head='classifier:<C>'))"

    def __init__(self, model: nn.Module, tokenizer, texts: dict[str, Sequence[str]], labels: dict[str, Sequence[int]],
                 *, num_classes: int, pad_id: int, seq_len: int = 128, max_length: int | None = None,
                 batch_size: int = 32, seed: int = 0) -> None:
        ids, self.truncated = {}, {}
        for split, t in texts.items():
            ids[split], self.truncated[split] = tokenize(tokenizer, t, seq_len, pad_id)
        super().__init__(model, ids, pad_id=pad_id, seq_len=seq_len, max_length=max_length, batch_size=batch_size,
                         seed=seed)
        self.labels = {s: torch.as_tensor(list(labels.get(s, labels["val"])), dtype=torch.int64) for s in SPLITS}
        for s in SPLITS:
            if len(self.labels[s]) != len(self.ids[s]):
                raise DataError(f"the {s} split has {len(self.ids[s])} texts but {len(self.labels[s])} labels")
        self._num_classes = num_classes
        check_forward(self, model, self.check_logits)

    def targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        sub = self._subset if split == "train" else None
        return self.labels[split][sub[idx] if sub is not None else idx]

    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        logits = self._outputs(predictor, self._rows(split))
        return classification_metrics(logits, self.labels[split], self.num_classes)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


class SentenceEmbedding(TokenTask):
    """A sentence encoder (token ids -> embedding).

    Quality: Spearman correlation between the cosine of each pair's embeddings and its gold score
    (STS-B style pairs) when pairs are given, and always the fidelity to the reference model's
    embeddings of the same sentences (mean and min cosine). Training (recovery after compression)
    pulls the embeddings toward the reference's: loss = 1 - cosine.
    """

    kind = "sentence-embedding"
    output_kind = "embedding"
    parity_samples = 64

    def __init__(self, model: nn.Module, tokenizer, pairs: dict[str, tuple[Sequence[str], Sequence[str], Sequence[float]]],
                 *, pad_id: int, seq_len: int = 64, max_length: int | None = None, batch_size: int = 32,
                 seed: int = 0) -> None:
        self.scores, ids, self.truncated, self.n_pairs = {}, {}, {}, {}
        for split, (a, b, s) in pairs.items():
            if not (len(a) == len(b) == len(s)):
                raise DataError(f"the {split} split has {len(a)} first and {len(b)} second sentences and "
                                f"{len(s)} scores: give one score per pair")
            ids[split], self.truncated[split] = tokenize(tokenizer, list(a) + list(b), seq_len, pad_id)
            self.scores[split] = np.asarray(s, dtype=np.float64)
            self.n_pairs[split] = len(a)
        super().__init__(model, ids, pad_id=pad_id, seq_len=seq_len, max_length=max_length, batch_size=batch_size,
                         seed=seed)
        check_forward(self, model, self._check_output)
        # the frozen reference the fidelity metrics and the training loss compare with
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._ref_cache: dict[str, torch.Tensor] = {}

    @property
    def metric(self) -> MetricSpec:
        return MetricSpec("spearman", True)

    def _check_output(self, out: torch.Tensor) -> None:
        if out.ndim != 2:
            raise ModelError(f"a sentence encoder must return (batch, dim) embeddings, got shape {tuple(out.shape)}: "
                             "load the encoder with mean pooling (effdl.zoo.load_text_model(..., head='embedding'))")

    def _reference(self, split: str) -> torch.Tensor:
        if split not in self._ref_cache:
            self._ref_cache[split] = self._outputs(self.reference, self._rows(split))
        return self._ref_cache[split]

    def targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.reference(self._rows(split)[idx]).float()

    def output_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(outputs, targets, dim=-1).mean()

    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        rows = self._rows(split)
        emb = self._outputs(predictor, rows)
        cos_ref = F.cosine_similarity(emb.double(), self._reference(split).double(), dim=1)
        out = {"cos_mean": float(cos_ref.mean()), "cos_min": float(cos_ref.min())}
        n = self.n_pairs.get(split, self.n_pairs["val"])
        pair_cos = F.cosine_similarity(emb[:n].double(), emb[n : 2 * n].double(), dim=1).numpy()
        out["spearman"] = spearman(pair_cos, self.scores.get(split, self.scores["val"]))
        return out

    def reference_quality(self, split: str = "val") -> QualityReference | None:
        """Chance: a similarity unrelated to the pairs has Spearman 0, with a standard error of
        1 / sqrt(n - 1) over n pairs."""
        n = self.n_pairs.get(split, self.n_pairs["val"])
        return QualityReference(chance=0.0, noise=1.0 / math.sqrt(max(n - 1, 1)),
                                chance_what="a similarity unrelated to the sentences")


class CausalLM(TokenTask):
    """A decoder language model (token ids -> next-token logits [batch, seq, vocab]) on prose.

    Each split's text is tokenized once and cut into non-overlapping windows of ``seq_len`` tokens
    (no padding); ``windows`` caps how many each split keeps. Quality: perplexity = exp(mean
    next-token negative log-likelihood) over the windows (lower is better); training: next-token
    cross-entropy.
    """

    kind = "causal-lm"
    output_kind = "token-logits"
    parity_samples = 8

    def __init__(self, model: nn.Module, tokenizer, texts: dict[str, str], *, pad_id: int, seq_len: int = 256,
                 windows: dict[str, int | None] | None = None, max_length: int | None = None, batch_size: int = 4,
                 seed: int = 0) -> None:
        windows = {"train": 256, "val": 16, "test": 32, **(windows or {})}
        ids = {}
        for split, text in texts.items():
            if not isinstance(text, str):
                raise DataError(f"CausalLM takes each split as one string of prose, got a {type(text).__name__} "
                                f"for {split!r}")
            cap = windows.get(split)
            if cap is not None:  # English runs ~4-5 characters a token: 16 per token is ample
                text = text[: cap * seq_len * 16]
            tokens = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            n = len(tokens) // seq_len
            if n == 0:
                raise DataError(f"the {split} text has {len(tokens)} tokens, fewer than one window of {seq_len}: "
                                "give more text or a smaller seq_len")
            n = n if cap is None else min(n, cap)
            ids[split] = torch.as_tensor(tokens[: n * seq_len], dtype=torch.int64).reshape(n, seq_len)
        super().__init__(model, ids, pad_id=pad_id, seq_len=seq_len, max_length=max_length, batch_size=batch_size,
                         seed=seed)
        self.truncated = {s: 0 for s in ids}
        check_forward(self, model, self._check_output)

    @property
    def metric(self) -> MetricSpec:
        return MetricSpec("perplexity", False)

    def _check_output(self, out: torch.Tensor) -> None:
        if out.ndim != 3 or out.shape[1] != self.seq_len:
            raise ModelError(f"a causal LM must return (batch, seq, vocab) logits, got shape {tuple(out.shape)}: "
                             "load it with effdl.zoo.load_text_model (a CausalLM wrapper)")

    def targets(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        return self._rows(split)[idx]

    def output_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        v = outputs.shape[-1]
        return F.cross_entropy(outputs[:, :-1].reshape(-1, v), targets[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate(self, predictor: Predictor | nn.Module, split: str = "test") -> dict[str, float]:
        rows = self._rows(split)
        nll, count = 0.0, 0
        for logits, ids in zip(eval_mode_outputs(predictor, rows.split(self.batch_size)),
                               rows.split(self.batch_size)):
            v = logits.shape[-1]
            nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, v).double(), ids[:, 1:].reshape(-1),
                                         reduction="sum"))
            count += ids[:, 1:].numel()
        mean = nll / count
        return {"perplexity": math.exp(mean), "nll": mean, "tokens": float(count)}

    def reference_quality(self, split: str = "val") -> QualityReference | None:
        """Chance: a unigram model of the train split's tokens (add-1/2 smoothing over the ids seen in
        any split), which ignores the context; its perplexity on ``split``'s predicted positions."""
        train, rows = self._rows("train"), self._rows(split)
        vocab = int(max(train.max(), rows.max())) + 1
        counts = torch.bincount(train.reshape(-1), minlength=vocab).double() + 0.5
        logp = counts.log() - counts.sum().log()
        nll = float(-logp[rows[:, 1:].reshape(-1)].mean())
        return QualityReference(chance=math.exp(nll), noise=0.0,
                                chance_what="a unigram model of the train text (token frequencies, no context)")
