"""quantize.gptq: the sweep against a plain column-by-column OBS, output error against round-to-
nearest (quantize.weights on the same grid), act-order, dead inputs, exact packed storage, end to
end on real data (digits MLP, a tiny Llama on Jane Austen), and the refusals."""
import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import effdl
from effdl.compress.quantize import GPTQConfig, WeightOnlyModel
from effdl.compress.quantize.gptq import gptq_codes, to_parts
from effdl.compress.quantize.packing import unpack
from effdl.compress.quantize.weight_only import WeightOnlyConfig, dequantize_weight, load_weight_only, quantize_weight
from effdl.core.errors import ConfigError, DataError
from effdl.deploy.storage import load_compact, model_tensors, save_compact

EPS = torch.finfo(torch.float32).eps  # quantize.weights' scale floor


# -- helpers shared with test_awq.py ---------------------------------------------------------------
def correlated_inputs(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs near a 16-dimensional subspace (a random covariance of low effective rank), at uneven
    feature scales, as transformer activations are."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 16, generator=g) @ torch.randn(16, features, generator=g)
    z += 0.3 * torch.randn(rows, features, generator=g)
    return z * torch.exp(0.5 * torch.randn(features, generator=g))


def task_on(model: nn.Module, x: torch.Tensor) -> effdl.Classification:
    """A classification task whose train split is ``x`` (the labels are never used by calibration)."""
    classes = model(x[:1]).shape[-1]
    data = TensorDataset(x, torch.arange(len(x)) % classes)
    return effdl.Classification(model, data, data, data, num_classes=classes, batch_size=len(x))


def output_error(model: nn.Module, quantized: nn.Module, x: torch.Tensor) -> float:
    """||f(X) - f_q(X)||_F / ||f(X)||_F."""
    with torch.no_grad():
        ref = model(x)
        return float(torch.linalg.norm(ref - quantized(x)) / torch.linalg.norm(ref))


def tiny_llama():
    """effdl.testing's tiny Llama task on Jane Austen (skips when the text set is not installed)."""
    from effdl.testing.kinds import model_kind

    try:
        return model_kind("decoder")
    except DataError as exc:
        pytest.skip(str(exc))


def one_layer(out_features: int, in_features: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_features, out_features, bias=False)).eval()


# -- the sweep against OBS written plainly ---------------------------------------------------------
def plain_params(cols: torch.Tensor, bits: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero point) of a slice of columns by min/max, as quantize.weights defines them."""
    lo, hi = cols.amin(1).clamp_max(0), cols.amax(1).clamp_min(0)
    if mode == "symmetric":
        return (torch.maximum(-lo, hi) / (2 ** (bits - 1) - 1)).clamp_min(EPS), torch.zeros_like(lo)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(EPS)
    return scale, (-(2 ** (bits - 1)) - torch.round(lo / scale)).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def plain_gptq(weight, hessian, bits, mode, group_size, damping, order):
    """GPTQ without blocks or a Cholesky factor: columns in ``order``; at each column the inverse of
    the Hessian of the columns not yet quantized is computed afresh, the column is rounded and its
    error spread over the later columns by the OBS rule. A group's scale comes from its current
    weights when the sweep reaches the first of its columns (per channel: from the original weights)."""
    qmin = -(2 ** (bits - 1)) + (mode == "symmetric")
    qmax = 2 ** (bits - 1) - 1
    w = weight.double()[:, order].clone()
    h = hessian.double()[order][:, order].clone()
    h.diagonal()[h.diagonal() == 0] = 1.0
    h += damping * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    group = order // group_size if group_size else torch.zeros_like(order)
    params = {} if group_size else {0: plain_params(weight.double(), bits, mode)}
    codes = torch.zeros(w.shape, dtype=torch.int64)
    for j in range(w.shape[1]):
        g = int(group[j])
        if g not in params:
            params[g] = plain_params(w[:, group == g], bits, mode)
        scale, zp = params[g]
        codes[:, j] = (torch.round(w[:, j] / scale) + zp).clamp(qmin, qmax).long()
        q = scale * (codes[:, j] - zp)
        hinv = torch.linalg.inv(h[j:, j:])
        w[:, j:] -= ((w[:, j] - q) / hinv[0, 0]).unsqueeze(1) * hinv[0].unsqueeze(0)
    out_codes, out_w = torch.empty_like(codes), torch.empty_like(w)
    out_codes[:, order], out_w[:, order] = codes, w
    return out_codes, out_w


TINY_GRIDS = [("channel", None, "symmetric", 3), ("group", 4, "affine", 3), ("group", 3, "symmetric", 4)]


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("block_size", [1, 3, 8])
@pytest.mark.parametrize("grid", TINY_GRIDS, ids=lambda g: f"{g[0]}{g[1] or ''}-{g[2]}-{g[3]}bit")
def test_sweep_equals_plain_obs_column_by_column(grid, block_size, act_order):
    """On a 6x8 layer: identical codes and weights within 1e-5, for blocks of 1, 3 (lazy updates
    across block edges, groups of 3 and 4 straddling them) and the whole width."""
    granularity, group_size, mode, bits = grid
    g = torch.Generator().manual_seed(2)
    x = correlated_inputs(64, 8, seed=2)
    w = torch.randn(6, 8, generator=g)
    h = 2 * x.T @ x / x.shape[0]
    cfg = WeightOnlyConfig(bits=bits, mode=mode, granularity=granularity, group_size=group_size)
    got = gptq_codes(w, h, cfg, block_size=block_size, damping=0.01, act_order=act_order)
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(8)
    want_codes, want_w = plain_gptq(w, h, bits, mode, group_size, 0.01, order)
    assert torch.equal(got.codes, want_codes)
    decoded = dequantize_weight(to_parts(got, cfg), w.shape, cfg)
    assert torch.allclose(decoded.double(), want_w, atol=1e-5, rtol=0), (decoded.double() - want_w).abs().max()


def test_act_order_sweeps_by_decreasing_hessian_diagonal():
    x = correlated_inputs(256, 8, seed=3)
    h = 2 * x.T @ x / x.shape[0]
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))
    cfg = WeightOnlyConfig(bits=3)
    order = torch.argsort(h.diagonal(), descending=True)
    assert not torch.equal(order, torch.arange(8))  # this Hessian's diagonal is not sorted already
    plain, reordered = gptq_codes(w, h, cfg), gptq_codes(w, h, cfg, act_order=True)
    assert not torch.equal(plain.codes, reordered.codes)
    # on inputs whose columns are already in that order, act_order changes nothing
    xs = x[:, order]
    hs = 2 * xs.T @ xs / xs.shape[0]
    assert torch.equal(gptq_codes(w, hs, cfg).codes, gptq_codes(w, hs, cfg, act_order=True).codes)


# -- output error against round-to-nearest ---------------------------------------------------------
@pytest.fixture(scope="module")
def correlated_layer():
    """A 32 -> 64 Linear and 2048 correlated input rows."""
    return one_layer(64, 32), correlated_inputs(2048, 32)


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("bits", [3, 4])
def test_output_error_below_round_to_nearest_on_the_same_grid(correlated_layer, bits, granularity, act_order):
    model, x = correlated_layer
    task = task_on(model, x)
    grid = {"bits": bits, "granularity": granularity, "group_size": 8 if granularity == "group" else None}
    rtn = output_error(model, effdl.apply(task, WeightOnlyConfig(**grid)), x)
    q = effdl.apply(task, GPTQConfig(**grid, act_order=act_order, num_batches=8, batch_size=256, block_size=16))
    err = output_error(model, q, x)
    # measured GPTQ / RTN error (in order, act order): 3-bit channel 0.512, 0.383; 3-bit group 0.520, 0.422;
    # 4-bit channel 0.480, 0.329; 4-bit group 0.479, 0.387 (RTN: 0.151, 0.136, 0.068, 0.059)
    assert err < 0.6 * rtn, (err, rtn, err / rtn)
    if act_order:
        assert err < 0.5 * rtn, (err, rtn, err / rtn)


def test_dead_inputs_are_rounded_to_nearest_and_move_nothing():
    g = torch.Generator().manual_seed(0)
    x = correlated_inputs(512, 16)
    x[:, 4:8] = 0.0  # a group of four inputs that never fire: H has zero rows and columns there
    w = torch.randn(8, 16, generator=g)
    h = 2 * x.T @ x / x.shape[0]
    cfg = WeightOnlyConfig(bits=3, granularity="group", group_size=4)
    got = gptq_codes(w, h, cfg, block_size=3)
    rtn = unpack(quantize_weight(w, cfg)["packed"], 3, w.numel(), signed=True).reshape(w.shape)
    assert torch.equal(got.codes[:, 4:8], rtn[:, 4:8].long())  # no error reaches them
    other = w.clone()
    other[:, 4:8] = torch.randn(8, 4, generator=g)
    moved = gptq_codes(other, h, cfg, block_size=3)
    live = [0, 1, 2, 3, *range(8, 16)]
    assert torch.equal(got.codes[:, live], moved.codes[:, live])  # and they pass none on
    assert bool(torch.isfinite(dequantize_weight(to_parts(got, cfg), w.shape, cfg)).all())


def test_a_group_wider_than_the_row_is_one_group_per_channel(correlated_layer):
    model, x = correlated_layer
    w, h = model[0].weight, 2 * x.T @ x / x.shape[0]
    wide = gptq_codes(w, h, WeightOnlyConfig(bits=4, granularity="group", group_size=128))
    channel = gptq_codes(w, h, WeightOnlyConfig(bits=4))
    assert torch.equal(wide.codes, channel.codes) and torch.equal(wide.scale[:, 0], channel.scale)


# -- storage and end to end ------------------------------------------------------------------------
LINEARS = ("1", "3", "5")  # the digits MLP: Linear 64->64, 64->32, 32->10


@pytest.mark.parametrize("mode", ["symmetric", "affine"])
def test_packed_storage_bytes_and_exact_reload(digits_task, tmp_path, mode):
    cfg = GPTQConfig(bits=3, mode=mode, granularity="group", group_size=16, num_batches=4, batch_size=64)
    q = effdl.apply(digits_task, cfg)
    assert isinstance(q, WeightOnlyModel) and q.quantized_modules == LINEARS
    tensors = model_tensors(q)
    nbytes = {k: t.numel() * t.element_size() for k, t in tensors.items() if ".weight." in k}
    # codes: 64*64 + 64*32 + 10*32 weights at 3 bits, each layer's stream padded to whole bytes
    packed = math.ceil(64 * 64 * 3 / 8) + math.ceil(32 * 64 * 3 / 8) + math.ceil(10 * 32 * 3 / 8)
    # scales: one float32 per 16 inputs of a row: 64*4 + 32*4 + 10*2 groups
    scales = 4 * (64 * 4 + 32 * 4 + 10 * 2)
    zero_points = math.ceil(256 * 3 / 8) + math.ceil(128 * 3 / 8) + math.ceil(20 * 3 / 8) if mode == "affine" else 0
    assert sum(v for k, v in nbytes.items() if k.endswith(".packed")) == packed == 2424
    assert sum(v for k, v in nbytes.items() if k.endswith(".scale")) == scales == 1616
    assert sum(v for k, v in nbytes.items() if k.endswith(".zero_point")) == zero_points
    assert sum(nbytes.values()) == packed + scales + zero_points
    assert not any(k.endswith(".weight") and k.split(".")[0] in LINEARS for k in tensors)  # no float copy

    save_compact(tensors, tmp_path / "m.safetensors")
    fresh = copy.deepcopy(digits_task.model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    back = load_weight_only(fresh, load_compact(tmp_path / "m.safetensors"), cfg.weight_config())
    for (k, a), (_, b) in zip(q.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, b), k
    x = digits_task.example_input(32)
    assert torch.equal(q(x), back(x))


@pytest.mark.parametrize("sequential", [True, False])
def test_digits_mlp_end_to_end(digits_task, sequential):
    before = {k: v.clone() for k, v in digits_task.model.state_dict().items()}
    x = torch.cat([b for b in digits_task.calibration_batches(4, 64)])
    acc = digits_task.evaluate(digits_task.model, "test")["accuracy"]
    rtn = effdl.apply(digits_task, WeightOnlyConfig(bits=3))
    q = effdl.apply(digits_task, GPTQConfig(bits=3, num_batches=4, batch_size=64, sequential=sequential))
    assert all(torch.equal(v, digits_task.model.state_dict()[k]) for k, v in before.items())  # input untouched
    # measured logit error (sequential / one pass / RTN): 0.089 / 0.081 / 0.170; act_order 0.045 / 0.048
    assert output_error(digits_task.model, q, x) < 0.8 * output_error(digits_task.model, rtn, x)
    assert acc - digits_task.evaluate(q, "test")["accuracy"] < 0.03


def test_tiny_llama_on_austen_end_to_end():
    task = tiny_llama()
    grid = {"bits": 3, "granularity": "group", "group_size": 16}
    q = effdl.apply(task, GPTQConfig(**grid, num_batches=2, batch_size=4))
    rtn = effdl.apply(task, WeightOnlyConfig(**grid))
    names = {n for n, m in task.model.named_modules() if isinstance(m, nn.Linear)}
    assert set(q.quantized_modules) == names and len(names) == 15  # q/k/v/o, gate/up/down of 2 layers + lm_head
    x = torch.cat(task.calibration_batches(2, 4))
    assert output_error(task.model, q, x) < output_error(task.model, rtn, x)  # measured 0.197 vs 0.222
    assert math.isfinite(task.evaluate(q, "test")["nll"])


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one weight, as a small decoder's lm_head does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.lm_head = nn.Linear(16, 40, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(ids))


def test_a_tied_output_layer_is_quantized_with_a_warning_naming_the_fix():
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 40, (64, 8))

    class TokenBatches:  # what a text task gives calibration: token-id batches
        def calibration_batches(self, n, batch_size):
            return list(ids.split(batch_size))[:n]

    with pytest.warns(UserWarning, match=r"lm_head is shared with another module.*exclude=\('\*lm_head',\)"):
        q = effdl.apply(model, GPTQConfig(bits=4, num_batches=2, batch_size=32), task=TokenBatches())
    assert q.quantized_modules == ("lm_head",) and q.model.embed.weight is q.model.lm_head.weight


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,match", [(0, "binary"), (1, "binary"), (17, "wider"), (2.5, "whole number"),
                                        (16, "quantize.weights")])
def test_bad_bits_are_refused_naming_the_fix(bits, match):
    with pytest.raises(ConfigError, match=match):
        GPTQConfig(bits=bits)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="needs group_size"):
        GPTQConfig(granularity="group")
    with pytest.raises(ConfigError, match="drop it"):
        GPTQConfig(group_size=32)
    for bad in ({"group_size": 1, "granularity": "group"}, {"damping": 0.0}, {"block_size": 0}, {"num_batches": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            GPTQConfig(**bad)


def test_a_group_size_that_does_not_divide_the_row_ends_with_a_shorter_group(digits_task):
    q = effdl.apply(digits_task, GPTQConfig(bits=4, granularity="group", group_size=24, num_batches=2))
    assert q.parts["1"]["scale"].shape == (64, 3)  # 64 inputs: groups of 24, 24, 16
    assert q.parts["5"]["scale"].shape == (10, 2)  # 32 inputs: 24, 8


def test_bad_data_is_refused(digits_task, correlated_layer):
    with pytest.raises(ConfigError, match="needs calibration data"):
        effdl.apply(digits_task.model, GPTQConfig())
    model, x = correlated_layer
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN/Inf in the weights"):
        effdl.apply(task_on(broken, x), GPTQConfig())
    nan = x.clone()
    nan[:, 5] = float("nan")
    with pytest.raises(DataError, match="NaN/Inf"):
        effdl.apply(task_on(model, nan), GPTQConfig())
    empty = task_on(model, x)
    empty.calibration_batches = lambda n, batch_size: []
    with pytest.raises(DataError, match="real inputs from the train split"):
        effdl.apply(empty, GPTQConfig())


def test_refuses_an_already_quantized_model(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=8))
    with pytest.raises(ConfigError, match="before quantization"):
        effdl.apply(q, GPTQConfig(), task=digits_task)
