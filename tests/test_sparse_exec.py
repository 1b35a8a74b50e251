import pytest
import torch
import torch.nn as nn

from effdl.core.errors import ConfigError
from effdl.core.tasks import ImageClassification
from effdl.deploy.parity import check_parity, parity_inputs
from effdl.deploy.sparse_exec import SparseLinear, decide, lower_sparse_eager, to_sparse_weight


def _sparse_linear(out, inp, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(inp, out)
    with torch.no_grad():
        # scaled like a real init so activations stay O(1) through the stack (parity is judged in rtol/atol)
        m.weight.copy_(torch.randn(out, inp, generator=g) / inp ** 0.5)
        m.weight.masked_fill_(torch.rand(out, inp, generator=g) < sparsity, 0.0)
    return m


@pytest.mark.parametrize("fmt", ["csr", "bsr"])
def test_sparse_linear_matches_dense(fmt):
    m = _sparse_linear(64, 128, 0.9)
    x = torch.randn(5, 3, 128)  # leading dims are kept
    torch.testing.assert_close(SparseLinear(m, fmt)(x), m(x), rtol=1e-3, atol=1e-5)
    assert to_sparse_weight(m.weight, fmt).to_dense().equal(m.weight)  # storage is exact


def test_bsr_needs_tiling_shape_and_known_format():
    with pytest.raises(ConfigError, match="divisible by 8"):
        to_sparse_weight(torch.zeros(10, 16), "bsr")
    with pytest.raises(ConfigError, match="one of"):
        to_sparse_weight(torch.zeros(8, 8), "coo")


def test_decide_requires_faster_at_every_batch():
    t = {1: {"dense": 1.0, "csr": 1.25, "bsr": 2.0}, 64: {"dense": 4.0, "csr": 1.0, "bsr": 3.0}}
    assert decide(t) == ("dense", 0.8)  # csr 0.8x at batch 1, bsr 0.5x at batch 1
    t[1]["csr"] = 0.5
    assert decide(t) == ("csr", 2.0)


def _consistent(rec):
    """The recorded decision follows from the recorded timings."""
    if "timings_ms" not in rec:
        return rec["decision"] == "dense" and rec["sparsity"] < 0.5
    speed = {f: min(t["dense"] / t[f] for t in rec["timings_ms"].values())
             for f in next(iter(rec["timings_ms"].values())) if f != "dense"}
    best = max(speed, key=speed.get)
    return rec["decision"] == (best if speed[best] > 1.0 else "dense")


def test_lowered_parity_and_decisions_follow_timings(digits, tmp_path):
    # A wide sparse layer (where CSR can win at batch 64) between two small ones, real digits input.
    model = nn.Sequential(nn.Flatten(), _sparse_linear(1024, 64, 0.0), nn.ReLU(),
                          _sparse_linear(1024, 1024, 0.97, seed=1), nn.ReLU(), _sparse_linear(10, 1024, 0.6, seed=2))
    task = ImageClassification(model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    low = lower_sparse_eager(model, task=task, workdir=tmp_path, threads=2, batch_sizes=(1, 64))
    assert low.runtime == "eager-sparse" and low.lossless
    recs = {r["layer"]: r for r in low.info["sparse_layers"]}
    assert set(recs) == {"1", "3", "5"}
    assert recs["1"]["decision"] == "dense" and "timings_ms" not in recs["1"]  # dense layer: not timed
    for rec in recs.values():
        assert _consistent(rec), rec
    assert low.info["converted"] == [n for n, r in recs.items() if r["decision"] != "dense"]
    res = check_parity(model, low, parity_inputs(task, (1, 64)))
    assert res.ok, res.reason
    assert isinstance(model[3], nn.Linear)  # the source model is untouched


def test_bad_threads_and_batches(digits_task, tmp_path):
    with pytest.raises(ConfigError):
        lower_sparse_eager(digits_task.model, task=digits_task, workdir=tmp_path, threads=0, batch_sizes=(1,))
    with pytest.raises(ConfigError):
        lower_sparse_eager(digits_task.model, task=digits_task, workdir=tmp_path, threads=1, batch_sizes=())
