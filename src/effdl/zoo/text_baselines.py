"""Text-classification baselines: a pretrained encoder with a classification head trained on the data.

A pretrained encoder brings no head for the user's labels, so effdl trains one, once, and caches it
like the zoo baselines: the encoder stays frozen, its mean-pooled embeddings of (up to
``HEAD_TRAIN_TEXTS``) train texts are computed once, and the Linear head is fitted on them with the
package's training loop (a Classification task over the embeddings). The head's weights are stored
as safetensors keyed by everything that changes them; the sha256 is checked before loading.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

import torch
from torch.utils.data import TensorDataset

from ..core.errors import ArtifactError
from ..core.io import load_weights, save_tensors, sha256_file, write_json
from ..core.tasks import Classification, TextClassification
from ..data import cache_dir

log = logging.getLogger(__name__)
HEAD_TRAIN_TEXTS = 3000
RECIPE = {"epochs": 60, "lr": 3e-3, "batch_size": 128, "format": 1}


def _embed(module, task: TextClassification, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    ids = task.ids[split][:n]
    with torch.no_grad():
        emb = torch.cat([module.embed(x) for x in ids.split(64)])
    return emb, task.labels[split][: len(ids)]


def trained_text_classifier(tm, text, *, model_spec: str, seq_len: int, limits: dict[str, int | None],
                            seed: int = 0) -> TextClassification:
    """The TextClassification task of ``text`` (a labelled TextData) around ``tm.module`` (a
    TextClassifier) with its head trained (or loaded from the cache)."""
    splits = {s: text.split(s) for s in ("train", "val", "test")}
    texts = {s: splits[s].texts[: limits.get(s)] if s != "train" else splits[s].texts for s in splits}
    labels = {s: splits[s].labels[: len(texts[s])].tolist() for s in splits}
    num_classes = len(splits["train"].label_names)
    task = TextClassification(tm.module, tm.tokenizer, texts, labels, num_classes=num_classes, pad_id=tm.pad_id,
                              seq_len=seq_len, max_length=tm.max_length, seed=seed)
    ident = {"model": model_spec, "weights_sha256": tm.sha256, "data": text.name, "seed": seed, "seq_len": seq_len,
             "texts": HEAD_TRAIN_TEXTS, "recipe": RECIPE}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    stem = cache_dir() / "baselines" / f"text-head-{text.name}-{key}"
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    head = tm.module.head
    if weights.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            if sha256_file(weights) != meta.get("sha256"):
                raise ArtifactError("its sha256 differs from the recorded one")
            head.load_state_dict(load_weights(weights))
            log.info("loaded cached text-classification head %s", weights.name)
            return task
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            log.warning("cached head %s is unusable (%s); retraining it", weights.name, exc)
    log.info("training the %s classification head on %s (once, then cached in %s)", model_spec, text.name,
             weights.parent)
    start = time.perf_counter()
    x_train, y_train = _embed(tm.module, task, "train", HEAD_TRAIN_TEXTS)
    x_val, y_val = _embed(tm.module, task, "val", None)
    torch.manual_seed(seed)
    fit = Classification(head, TensorDataset(x_train, y_train), TensorDataset(x_val, y_val), num_classes=num_classes,
                         batch_size=RECIPE["batch_size"], seed=seed)
    fit.train(head, epochs=RECIPE["epochs"], lr=RECIPE["lr"], keep_sparsity=False)
    val = fit.evaluate(head, "val")
    # weights first, the sidecar with their sha256 last: a killed run leaves nothing that is trusted
    save_tensors(head.state_dict(), weights, metadata={"effdl_text_head": f"{model_spec} on {text.name}"})
    write_json(sidecar, {**ident, "val_accuracy": val["accuracy"], "sha256": sha256_file(weights),
                         "seconds": round(time.perf_counter() - start, 2)})
    log.info("trained the head in %.1f s: val accuracy %.4f", time.perf_counter() - start, val["accuracy"])
    return task.with_model(tm.module.eval())
