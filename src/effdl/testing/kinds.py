"""Tiny tasks of each model kind (``effdl.core.registry.MODEL_KINDS``), built from real data.

Each model is small and untrained (random weights, seeded) and each split holds a few dozen real
examples, so a technique runs on it in well under a second; the point is to exercise the code
paths of a technique on every architecture family it claims, not to measure quality. Data sets
and the tokenizer are read once per process (memory only, nothing is written to disk).
"""
from __future__ import annotations

import functools

import torch
from torch.utils.data import Subset

from ..core.errors import ConfigError
from ..core.registry import MODEL_KINDS
from ..core.task import Task

#: examples per split (train, val, test) of the image/vector kinds
IMAGE_SIZES = (256, 64, 64)
#: STS-B pairs per split of the encoder kind
PAIRS = (24, 8, 8)
#: windows of DECODER_SEQ_LEN tokens per split of the decoder kind
WINDOWS = (8, 2, 2)
ENCODER_SEQ_LEN = 16
DECODER_SEQ_LEN = 32


@functools.lru_cache(maxsize=None)
def _splits(name: str):
    from ..data import load_data

    return load_data(name)


def _subsets(splits, seed: int):
    # a seeded random subset, so every class shows up in the few examples kept
    out = []
    for split, n in zip((splits.train, splits.val, splits.test), IMAGE_SIZES):
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        out.append(Subset(split, idx))
    return out


def _image_task(data: str, arch: str, seed: int, **knobs) -> Task:
    from ..core.tasks import Classification
    from ..zoo import build

    splits = _splits(data)
    torch.manual_seed(seed)
    model = build(arch, input_shape=tuple(splits.input_shape), num_classes=splits.num_classes, **knobs).eval()
    train, val, test = _subsets(splits, seed)
    return Classification(model, train, val, test, num_classes=splits.num_classes, batch_size=64, seed=seed)


@functools.lru_cache(maxsize=None)
def tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer (WordPiece, 30,522 tokens), from its installed package."""
    from transformers import AutoTokenizer

    from ..zoo.minilm import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def _encoder_task(seed: int) -> Task:
    from transformers import BertConfig, BertModel

    from ..core.tasks import SentenceEmbedding
    from ..data.text import load_text
    from ..zoo.text_wrappers import SentenceEncoder

    tok = tokenizer()
    data = load_text("stsb")
    pairs = {}
    for name, n in zip(("train", "val", "test"), PAIRS):
        split = data.split(name)
        pairs[name] = (split.sentences_a[:n], split.sentences_b[:n], split.scores[:n].tolist())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    # no pooler: SentenceEncoder mean-pools last_hidden_state, an unused pooler would get no gradients
    model = SentenceEncoder(BertModel(cfg, add_pooling_layer=False), tok.pad_token_id).eval()
    return SentenceEmbedding(model, tok, pairs, pad_id=tok.pad_token_id, seq_len=ENCODER_SEQ_LEN,
                             max_length=cfg.max_position_embeddings, batch_size=16, seed=seed)


def _decoder_task(seed: int) -> Task:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..core.tasks import CausalLM
    from ..data.text import load_text
    from ..zoo.text_wrappers import CausalLM as CausalLMWrapper

    tok = tokenizer()
    data = load_text("austen")  # raises DataError naming the set-up command when not installed
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = CausalLMWrapper(LlamaForCausalLM(cfg), tok.pad_token_id).eval()
    texts = {name: data.split(name).text for name in ("train", "val", "test")}
    windows = dict(zip(("train", "val", "test"), WINDOWS))
    return CausalLM(model, tok, texts, pad_id=tok.pad_token_id, seq_len=DECODER_SEQ_LEN, windows=windows,
                    max_length=cfg.max_position_embeddings, batch_size=4, seed=seed)


def model_kind(kind: str, *, seed: int = 0) -> Task:
    """A tiny task of model ``kind`` (one of MODEL_KINDS) with a fresh random-weight model.

    - "cnn": a half-width ResNet-8 (20k parameters; residual blocks, BatchNorm) on 256/64/64 MNIST
      images (Classification)
    - "mlp": the zoo MLP on 256/64/64 scikit-learn digits (Classification)
    - "encoder": a 2-layer, 32-wide BERT (MiniLM's tokenizer) in a SentenceEncoder, on 24/8/8 STS-B
      pairs at 16 tokens (SentenceEmbedding)
    - "decoder": a 2-layer, 32-wide Llama (same tokenizer) in a CausalLM wrapper, on 8/2/2 windows
      of 32 tokens of Jane Austen (CausalLM)
    """
    if kind == "cnn":
        # a residual CNN rather than LeNet-5: it also exercises block removal, BatchNorm folding and
        # channel pruning across skip connections
        return _image_task("mnist", "resnet8", seed, width=0.5)
    if kind == "mlp":
        return _image_task("digits", "mlp", seed)
    if kind == "encoder":
        return _encoder_task(seed)
    if kind == "decoder":
        return _decoder_task(seed)
    raise ConfigError(f"unknown model kind {kind!r}: use one of {MODEL_KINDS}")
