"""Parity checks: hand-computed SQNR, tolerance edges, and deliberately wrong lowerings failing."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from test_runtimes import small_mlp, trained_task

from effdl.core.errors import DataError
from effdl.deploy.lowered import Lowered
from effdl.deploy.parity import SQNR_IDENTICAL_DB, check_parity, parity_inputs, sqnr_db


@pytest.fixture(scope="module")
def task(digits):
    return trained_task(small_mlp, digits, epochs=10)


@pytest.fixture(scope="module")
def inputs(task):
    return parity_inputs(task, batch_sizes=(1, 32), n=256)


def lowered(fn, lossless=True, name="test"):
    return Lowered(name, "fp32" if lossless else "int8", lossless, fn)


def test_sqnr_hand_computed():
    x = torch.tensor([[3.0, 4.0]])  # ||x|| = 5
    assert sqnr_db(x, torch.tensor([[3.0, 4.5]])) == pytest.approx(20.0)  # ||x - y|| = 0.5 -> 20 log10(10)
    assert sqnr_db(x, torch.tensor([[3.05, 4.0]])) == pytest.approx(40.0)  # 20 log10(100)
    assert sqnr_db(x, x.clone()) == SQNR_IDENTICAL_DB


def test_parity_inputs_are_real_validation_data_at_two_batch_sizes(task, inputs):
    sizes = [x.shape[0] for x in inputs]
    assert sizes[:8] == [1] * 8 and set(sizes[8:]) == {32} and sum(sizes[8:]) >= 256
    val = task.splits["val"]
    assert torch.equal(inputs[0][0], val[0][0]) and torch.equal(inputs[8][5], val[5][0])
    # digits' validation split has 180 images: the test split fills up the rest, no repeats
    flat = torch.cat(inputs[8:]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] >= 250


def test_identical_lowering_passes_with_zero_error(task, inputs):
    res = check_parity(task.model, lowered(lambda x: task.model(x)), inputs)
    assert res.ok and res.reason is None
    assert res.max_abs_err == 0.0 and res.sqnr_db == SQNR_IDENTICAL_DB and res.top1_agreement == 1.0
    assert res.n_samples == 8 + 256 and res.batch_sizes == [1, 32]
    json.dumps(res.to_dict())  # JSON-able: no inf/NaN sneaks into reports


def test_lossless_tolerance_edges(task, inputs):
    within = check_parity(task.model, lowered(lambda x: task.model(x) + 5e-6), inputs, rtol=1e-3, atol=1e-5)
    assert within.ok and within.max_abs_err == pytest.approx(5e-6, rel=0.1)
    scaled = check_parity(task.model, lowered(lambda x: task.model(x) * 1.002), inputs, rtol=1e-3, atol=1e-5)
    assert not scaled.ok
    assert "atol + rtol*|x|" in scaled.reason and "atol=1e-05, rtol=0.001" in scaled.reason
    assert scaled.max_rel_err == pytest.approx(0.002, rel=1e-3)


def test_perturbed_weights_fail_int8_parity_naming_sqnr(task, inputs):
    torch.manual_seed(1)
    wrong = copy.deepcopy(task.model)
    with torch.no_grad():
        for p in wrong.parameters():
            p.add_(torch.randn_like(p) * p.std() * 0.5)
    res = check_parity(task.model, lowered(lambda x: wrong(x), lossless=False), inputs)
    with torch.no_grad():
        ref = torch.cat([task.model(x) for x in inputs])
        out = torch.cat([wrong(x) for x in inputs])
    expect = 20 * math.log10(float(ref.double().norm()) / float((ref - out).double().norm()))
    assert res.sqnr_db == pytest.approx(expect, abs=1e-3) and res.sqnr_db < 20
    assert not res.ok and f"SQNR {res.sqnr_db:.2f} dB is below the required 20 dB" in res.reason


def test_small_int8_like_noise_passes(task, inputs):
    torch.manual_seed(2)
    noisy = lambda x: task.model(x) * (1 + 0.005 * torch.randn(x.shape[0], 10))  # ~46 dB
    res = check_parity(task.model, lowered(noisy, lossless=False), inputs)
    assert res.ok and 35 < res.sqnr_db < 60 and res.top1_agreement >= 0.99


def test_swapped_classes_fail_on_agreement(task, inputs):
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    res = check_parity(task.model, lowered(lambda x: task.model(x)[:, perm], lossless=False), inputs,
                       min_sqnr_db=-100.0)
    assert not res.ok and "top-1 agreement" in res.reason and "required 0.99" in res.reason
    assert res.top1_agreement < 0.9


def test_nan_output_and_shape_mismatch_fail(task, inputs):
    nan = check_parity(task.model, lowered(lambda x: task.model(x) * float("nan")), inputs)
    assert not nan.ok and "NaN/Inf" in nan.reason
    short = check_parity(task.model, lowered(lambda x: task.model(x)[:, :9]), inputs)
    assert not short.ok and "output shape" in short.reason
    with pytest.raises(DataError):
        check_parity(task.model, lowered(lambda x: x), [])


def test_reference_module_in_train_mode_is_compared_in_eval_and_restored(task, inputs):
    model = copy.deepcopy(task.model).train()
    res = check_parity(model, lowered(lambda x: task.model(x)), inputs)
    assert res.ok and model.training


def test_embeddings_are_gated_by_cosine_and_token_logits_by_per_token_top1():
    from effdl.deploy.lowered import Lowered

    g = torch.Generator().manual_seed(0)
    ref = nn.Linear(8, 16).eval()
    x = [torch.randn(32, 8, generator=g)]
    with torch.no_grad():
        out = ref(x[0])
    # noise of 15% of each row's norm: cosine ~0.99 per sample, SQNR ~16.5 dB
    noise = torch.randn(out.shape, generator=g)
    noise = 0.15 * noise / noise.norm(dim=1, keepdim=True) * out.norm(dim=1, keepdim=True)
    low = Lowered("noisy", "int8", False, lambda t: ref(t) + noise[: t.shape[0]])
    emb = check_parity(ref, low, x, output_kind="embedding", min_cosine=0.98)
    cos = torch.nn.functional.cosine_similarity(out + noise, out, dim=1)
    assert emb.ok and emb.cos_min == pytest.approx(float(cos.min()), abs=1e-6) and emb.sqnr_db < 20
    strict = check_parity(ref, low, x, output_kind="embedding", min_cosine=0.999)
    assert not strict.ok and "min cosine similarity" in strict.reason
    assert not check_parity(ref, low, x).ok  # class logits keep the SQNR gate
    # token logits [B, T, V]: agreement is counted per position along the vocabulary
    tokens = [torch.randn(2, 5, 8, generator=g)]
    lm = nn.Linear(8, 4).eval()
    with torch.no_grad():
        logits = lm(tokens[0])
    flip = logits.clone()
    flip[0, 0] = -flip[0, 0]  # one of the 10 positions changes its top-1 (and only that one)
    changed = int(flip[0, 0].argmax() != logits[0, 0].argmax())
    res = check_parity(lm, Lowered("flip", "int8", False, lambda t: flip), tokens, output_kind="token-logits")
    assert res.top1_agreement == pytest.approx(1 - changed / 10)
