"""prune.sparsegpt: the OBS update rule against a plain implementation, reconstruction error against
magnitude pruning and Wanda, and what only SparseGPT has (blocks, damping, dead inputs). The contract
it shares with prune.wanda (exact sparsity, N:M, no-op, errors, end to end, storage) is tested on
both methods in test_wanda.py."""
import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.layer_stats import input_stats
from effdl.compress.prune import SparseGPTConfig, WandaConfig
from effdl.compress.prune.granularity import Granularity
from effdl.compress.prune.sparsegpt import output_error, sparsegpt_prune
from effdl.core.errors import ConfigError
from test_wanda import nm_kept, task_on


def naive_obs(weight: torch.Tensor, hessian: torch.Tensor, pruned: torch.Tensor, damping: float) -> torch.Tensor:
    """Optimal Brain Surgeon column by column, written plainly: at column j the inverse Hessian of
    the columns not yet frozen, inv(H[j:, j:]), is computed afresh; a pruned weight's removal is
    compensated by the row's later weights, then column j is frozen."""
    w = weight.double().clone()
    h = hessian.double().clone()
    h += damping * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    for j in range(w.shape[1]):
        hinv = torch.linalg.inv(h[j:, j:])
        for r in range(w.shape[0]):
            if pruned[r, j]:
                w[r, j:] -= w[r, j] / hinv[0, 0] * hinv[0, :]
    return w.masked_fill(pruned, 0.0)


def correlated_inputs(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs that live near a 16-dimensional subspace, at uneven feature scales (as LLM activations do)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 16, generator=g) @ torch.randn(16, features, generator=g)
    z += 0.3 * torch.randn(rows, features, generator=g)
    return z * torch.exp(0.5 * torch.randn(features, generator=g))


@pytest.mark.parametrize("block_size", [1, 2, 4, 6])
def test_update_rule_matches_plain_obs_with_a_fixed_mask(block_size):
    g = torch.Generator().manual_seed(1)
    x = correlated_inputs(64, 6, seed=1)
    w = torch.randn(4, 6, generator=g)
    h = 2 * x.T @ x / x.shape[0]
    pruned = torch.rand(4, 6, generator=g) < 0.5
    got, mask = sparsegpt_prune(w, h, mask=pruned, block_size=block_size, damping=0.01)
    assert torch.equal(mask, pruned)
    want = naive_obs(w, h, pruned, 0.01)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0), (got.double() - want).abs().max()


@pytest.fixture(scope="module")
def correlated_layer():
    """A 128 -> 64 Linear, its correlated inputs, and ||W X^T||_F."""
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    x = correlated_inputs(2048, 128)
    return nn.Sequential(lin), x


def _error(model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    """||W X^T - W' X^T||_F / ||W X^T||_F of the one-layer model."""
    with torch.no_grad():
        return float(torch.linalg.norm(model(x) - pruned(x)) / torch.linalg.norm(model(x)))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_reconstruction_error_beats_wanda_and_magnitude(pattern, correlated_layer):
    model, x = correlated_layer
    task = task_on(model, x, num_classes=64)
    kw = {} if pattern == "unstructured" else {"pattern": "n:m", "n": int(pattern[0]), "m": int(pattern[2])}
    mag = (effdl.prune.Magnitude(sparsity=0.5, scope="layer") if pattern == "unstructured"
           else effdl.prune.Weights(sparsity=0.5, granularity="n:m", n=kw["n"], m=kw["m"]))
    calib = {"num_batches": 8, "batch_size": 256}
    err = {name: _error(model, effdl.apply(task, cfg), x)
           for name, cfg in (("magnitude", mag), ("wanda", WandaConfig(**kw, **calib)),
                             ("sparsegpt", SparseGPTConfig(**kw, **calib)))}
    # measured (magnitude / wanda / sparsegpt): unstructured 0.342 / 0.247 / 0.068, 2:4 0.451 / 0.310 / 0.094,
    # 4:8 0.404 / 0.279 / 0.088; the bounds leave room for other BLAS summation orders
    assert err["sparsegpt"] < 0.5 * err["wanda"], err
    assert err["wanda"] < err["magnitude"], err


def test_output_error_from_the_hessian_is_the_measured_one(correlated_layer):
    model, x = correlated_layer
    w = model[0].weight.detach()
    h = input_stats(model, {"0": model[0]}, list(x.split(256)))["0"].hessian()
    new, _ = sparsegpt_prune(w, h, sparsity=0.5)
    direct = float(torch.linalg.norm(x @ (w - new).T) / torch.linalg.norm(x @ w.T))
    assert output_error(w, new, h) == pytest.approx(direct, rel=1e-4)


def test_every_row_of_every_block_loses_its_share(correlated_layer):
    model, x = correlated_layer
    h = 2 * x.T @ x / x.shape[0]
    _, pruned = sparsegpt_prune(model[0].weight, h, sparsity=0.5, block_size=32)
    per_block = pruned.reshape(64, 4, 32).sum(-1)
    assert bool((per_block == 16).all())
    # 30%: 0.3 * 64 * 32 = 614.4 per block -> 614 or 615 spread over the rows (9 or 10 each), 2458 in all
    _, pruned = sparsegpt_prune(model[0].weight, h, sparsity=0.3, block_size=32)
    per_row_block = pruned.reshape(64, 4, 32).sum(-1)
    assert int(pruned.sum()) == round(0.3 * pruned.numel())
    assert set(per_row_block.unique().tolist()) <= {9, 10}
    assert sorted(per_row_block.sum(0).tolist()) == [614, 614, 615, 615]


def test_dead_inputs_are_pruned_first_and_receive_no_update():
    g = torch.Generator().manual_seed(0)
    x = correlated_inputs(256, 16)
    x[:, [3, 9]] = 0.0  # two inputs that never fire: H has zero rows and columns there
    w = torch.randn(8, 16, generator=g)
    h = 2 * x.T @ x / x.shape[0]
    # one block: 16 weights, two per row, exactly the dead ones (with smaller blocks each block
    # prunes its own share, and the dead weights go first within it)
    new, pruned = sparsegpt_prune(w, h, sparsity=0.125, block_size=16)
    assert bool(pruned[:, [3, 9]].all()) and int(pruned.sum()) == 16
    assert output_error(w, new, h) == pytest.approx(0.0, abs=1e-6)  # removing them costs nothing on these data
    new, pruned = sparsegpt_prune(w, h, sparsity=0.5)
    assert bool(torch.isfinite(new).all()) and bool(pruned[:, [3, 9]].all())


def test_existing_zeros_stay_zero():
    g = torch.Generator().manual_seed(0)
    x = correlated_inputs(256, 16)
    w = torch.randn(8, 16, generator=g)
    w[torch.rand(8, 16, generator=g) < 0.2] = 0.0
    new, pruned = sparsegpt_prune(w, 2 * x.T @ x / 256, sparsity=0.5, block_size=8)
    assert bool(pruned[w == 0].all()) and bool((new[w == 0] == 0).all())


def test_nm_groups_are_chosen_on_updated_weights():
    g = torch.Generator().manual_seed(0)
    x = correlated_inputs(512, 32)
    w = torch.randn(16, 32, generator=g)
    h = 2 * x.T @ x / 512
    new, pruned = sparsegpt_prune(w, h, granularity=Granularity("n:m", 2, 4), block_size=8)
    assert bool((nm_kept(new, 4) == 2).all()) and bool((pruned.reshape(16, 8, 4).sum(-1) == 2).all())
    # the same masks fixed up front give the same weights: the update rule is the fixed-mask one
    fixed, _ = sparsegpt_prune(w, h, mask=pruned, block_size=8)
    assert torch.allclose(fixed, new, atol=1e-6)


def test_settings_only_sparsegpt_has_are_checked():
    with pytest.raises(ConfigError, match=r"block_size 12 must be a multiple of m=8.*set block_size=8"):
        SparseGPTConfig(pattern="n:m", n=4, m=8, block_size=12)
    for bad in ({"damping": 0.0}, {"damping": 1.5}, {"block_size": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SparseGPTConfig(**bad)
    h = torch.eye(4)
    h[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="not positive definite.*raise damping"):
        sparsegpt_prune(torch.randn(2, 4), h)
    with pytest.raises(ConfigError, match="the Hessian is \\(3, 3\\), the weight has 4 inputs"):
        sparsegpt_prune(torch.randn(2, 4), torch.eye(3))
