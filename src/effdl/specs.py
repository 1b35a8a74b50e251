"""From what a user types (``--model``, ``--data``) to a Task: the one place that picks a concrete task.

- tensor data (``mnist``, ``digits``, ``mnist1d``, ``path.py:factory``) with an image/tensor model
  (``zoo:lenet5``, ``path.py:factory``) -> ``Classification``;
- ``stsb`` (sentence pairs) with an encoder (``zoo:minilm``, ``hf:DIR``) -> ``SentenceEmbedding``;
- ``sentiment`` (labelled texts) with an encoder -> ``TextClassification`` (the classification head is
  trained once on the train split and cached, like the zoo baselines);
- ``austen`` (prose) with a decoder LM (``zoo:smollm2-135m``, ``hf:DIR``) -> ``CausalLM``;
- ``path.py:factory`` with a text model: the factory returns an ``effdl.data.TextData`` (its kind picks
  the task as above); with a tensor model it returns (train, val, test) datasets.

Anything else is refused with an error naming what each side is and what would match.
"""
from __future__ import annotations

import numpy as np

from .core.errors import ConfigError, DataError
from .data.factory import is_factory_spec
from .core.task import Task

#: evaluation sizes of the text tasks (pairs / texts / windows per split); ``eval_limit`` caps them
TEXT_DEFAULTS = {
    "pairs": {"seq_len": 64, "val": 500, "test": None},
    "labelled": {"seq_len": 64, "val": 500, "test": 1000},
    "corpus": {"seq_len": 256, "train": 256, "val": 16, "test": 32},
}
#: which text data kind goes with which model architecture
_TEXT_KINDS = {"pairs": "encoder", "labelled": "encoder", "corpus": "decoder"}


def is_text_model(spec: str) -> bool:
    from .zoo import PRETRAINED_TEXT

    return spec.startswith("hf:") or (spec.startswith("zoo:") and spec[4:] in PRETRAINED_TEXT)


def is_text_data(spec: str) -> bool:
    from .data import TEXT_DATASETS

    return spec in TEXT_DATASETS


def build_task(model: str, data: str, *, weights: str | None = None, allow_pickle: bool = False,
               latency_only: bool = False, eval_limit: int | None = None, seed: int = 0) -> Task:
    """The Task for a model spec and a data spec (see the module docstring)."""
    if not isinstance(model, str) or not isinstance(data, str):
        raise ConfigError("model and data specs must be strings such as 'zoo:lenet5' and 'mnist'")
    if eval_limit is not None and eval_limit < 1:
        raise ConfigError(f"eval_limit must be >= 1 (examples per evaluation split), got {eval_limit}")
    text_model, text_data = is_text_model(model), is_text_data(data)
    if text_model and is_factory_spec(data):  # a user's text: the factory returns a TextData
        text_data = True
    if text_model != text_data:
        from .data import TEXT_DATASETS

        if text_model:
            raise DataError(f"{model} is a text model but --data {data!r} is tensor (image/signal) data: use a text "
                            f"data set ({', '.join(sorted(TEXT_DATASETS))})")
        raise DataError(f"--data {data!r} is text, but {model} takes tensors (images/signals): use a text model "
                        "(zoo:minilm, zoo:smollm2-135m or hf:PATH to a Hugging Face model directory) or tensor data")
    if text_data:
        if weights is not None:
            raise ConfigError("--weights applies to tensor models; a text model's weights come with it "
                              "(hf:PATH holds them)")
        return _text_task(model, data, eval_limit=eval_limit, seed=seed)
    return _tensor_task(model, data, weights, allow_pickle, latency_only)


def _tensor_task(model: str, data: str, weights, allow_pickle: bool, latency_only: bool) -> Task:
    from .core.tasks import Classification
    from .data import load_data
    from .zoo import load_model

    splits = load_data(data)
    if splits.synthetic and not latency_only:
        raise ConfigError(f"{data!r} is synthetic (random inputs): use it with `effdl measure` for latency and "
                          "size only; optimizing needs real data (a bundled name or path/to/file.py:factory)")
    m = load_model(model, splits, weights=weights, allow_pickle=allow_pickle)
    return Classification(m, splits.train, splits.val, splits.test, num_classes=splits.num_classes)


def _text_factory(spec: str):
    """``path.py:factory`` for a text model: ``factory()`` returns an ``effdl.data.TextData`` (sentence
    pairs, labelled texts or a corpus, built from the records in ``effdl.data.text``)."""
    from .core.io import call_factory
    from .data import TextData

    out = call_factory(spec, "text data factory", DataError)
    if not isinstance(out, TextData):
        raise DataError(f"{spec}: a text data factory must return an effdl.data.TextData (kind 'pairs', 'labelled' or "
                        f"'corpus', with SentencePairs / LabelledText / Corpus splits), got {type(out).__name__}")
    return out


def _cap(n: int | None, limit: int | None) -> int | None:
    return limit if n is None else (n if limit is None else min(n, limit))


def _text_task(model: str, data: str, *, eval_limit: int | None, seed: int) -> Task:
    from .core.tasks import CausalLM, SentenceEmbedding
    from .data import load_text
    from .zoo import load_text_model
    from .zoo.text import text_arch

    text = load_text(data, seed=seed) if not is_factory_spec(data) else _text_factory(data)
    defaults = TEXT_DEFAULTS[text.kind]
    arch, want = text_arch(model), _TEXT_KINDS[text.kind]
    if arch != want:
        raise DataError(f"--data {data!r} ({text.kind}) needs a text {want}, but {model} is "
                        f"{'an' if arch == 'encoder' else 'a'} {arch}: "
                        + ("use an encoder such as zoo:minilm" if want == "encoder"
                           else "use a causal language model such as zoo:smollm2-135m"))
    head = "embedding" if text.kind == "pairs" else None
    if text.kind == "labelled":
        head = f"classifier:{len(text.train.label_names)}"
    tm = load_text_model(model, head=head) if head else load_text_model(model)
    seq_len = min(defaults["seq_len"], tm.max_length) if tm.max_length else defaults["seq_len"]
    if text.kind == "pairs":
        pairs = {}
        for split in ("train", "val", "test"):
            p = text.split(split)
            n = min(_cap(defaults.get(split), eval_limit if split != "train" else None) or len(p), len(p))
            # STS-B's files run genre by genre: a capped split is a seeded random sample, not the first rows
            keep = sorted(np.random.default_rng(seed).permutation(len(p))[:n].tolist()) if n < len(p) else range(n)
            pairs[split] = ([p.sentences_a[i] for i in keep], [p.sentences_b[i] for i in keep],
                            np.asarray([p.scores[i] for i in keep]))
        return SentenceEmbedding(tm.module, tm.tokenizer, pairs, pad_id=tm.pad_id, seq_len=seq_len,
                                 max_length=tm.max_length, seed=seed)
    if text.kind == "corpus":
        windows = {s: _cap(defaults[s], eval_limit if s != "train" else None) for s in ("train", "val", "test")}
        return CausalLM(tm.module, tm.tokenizer, {s: text.split(s).text for s in ("train", "val", "test")},
                        pad_id=tm.pad_id, seq_len=seq_len, windows=windows, max_length=tm.max_length, seed=seed)
    from .zoo.text_baselines import trained_text_classifier

    return trained_text_classifier(tm, text, model_spec=model, seq_len=seq_len,
                                   limits={s: _cap(defaults.get(s), eval_limit) for s in ("val", "test")}, seed=seed)
