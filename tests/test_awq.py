"""quantize.awq: the searched input scale is never worse than plain rounding (scale 1) on the
calibration inputs and clearly better when a few input channels carry outliers; the scale itself;
exact storage with the extra per-layer input scale; end to end on real data; the refusals."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.layer_stats import input_stats
from effdl.compress.quantize import AWQConfig, AWQModel
from effdl.compress.quantize.awq import awq_search, input_scale, load_awq
from effdl.compress.quantize.weight_only import WeightOnlyConfig, dequantize_weight, quantize_weight
from effdl.core.errors import ArtifactError, ConfigError, DataError
from effdl.deploy.storage import load_compact, model_tensors, save_compact
from test_gptq import correlated_inputs, one_layer, output_error, task_on, tiny_llama

OUTLIERS = [3, 17, 40]


def outlier_inputs(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    """Unit-variance inputs except three channels 30 times larger (as in LLM activations)."""
    x = torch.randn(rows, features, generator=torch.Generator().manual_seed(seed))
    x[:, OUTLIERS] *= 30.0
    return x


def stats_of(model: nn.Sequential, x: torch.Tensor):
    return input_stats(model, {"0": model[0]}, x.split(256))["0"]


GRIDS = [{"bits": b, "mode": m, "granularity": "group", "group_size": 16} for b in (3, 4) for m in ("symmetric", "affine")]
GRIDS.append({"bits": 4, "mode": "symmetric", "granularity": "channel", "group_size": None})


def _id(grid):
    return f"{grid['bits']}bit-{grid['mode']}-{grid['granularity']}"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("grid", GRIDS, ids=_id)
def test_never_worse_than_scale_one_on_the_calibration_inputs(grid, seed):
    model = one_layer(48, 64, seed=seed)
    x = correlated_inputs(2048, 64, seed=seed) if seed != 2 else torch.randn(2048, 64)  # iid: little to gain
    task = task_on(model, x)
    rtn = output_error(model, effdl.apply(task, WeightOnlyConfig(**grid)), x)
    q = effdl.apply(task, AWQConfig(**grid, num_batches=8, batch_size=256))  # the 2048 rows, all of them
    assert isinstance(q, AWQModel)
    assert output_error(model, q, x) <= rtn * (1 + 1e-6)


def test_alpha_zero_is_plain_rounding():
    model, x = one_layer(48, 64), correlated_inputs(1024, 64)
    cfg = WeightOnlyConfig(bits=3, granularity="group", group_size=16)
    w, stats = model[0].weight.detach(), stats_of(model, x)
    assert torch.equal(input_scale(stats.abs_mean(), 0.0), torch.ones(64))
    alpha, parts, errors = awq_search(w, stats, cfg, grid=1)  # the grid {0} alone
    rtn = quantize_weight(w, cfg)
    assert alpha == 0.0 and torch.equal(parts["packed"], rtn["packed"]) and torch.equal(parts["scale"], rtn["scale"])
    delta = (w - dequantize_weight(rtn, w.shape, cfg)).double()
    assert errors[0] == pytest.approx(float(((delta @ stats.hessian().double()) * delta).sum()), rel=1e-9)


@pytest.mark.parametrize("grid", GRIDS[:4], ids=_id)
def test_strictly_better_with_a_few_outlier_input_channels(grid):
    model, x = one_layer(64, 64), outlier_inputs(2048, 64)
    task = task_on(model, x)
    rtn = output_error(model, effdl.apply(task, WeightOnlyConfig(**grid)), x)
    q = effdl.apply(task, AWQConfig(**grid, num_batches=8, batch_size=256))
    # measured AWQ / RTN: 3-bit 0.322 (symmetric), 0.405 (affine); 4-bit 0.319, 0.436
    assert output_error(model, q, x) < 0.6 * rtn
    alpha, parts, errors = awq_search(model[0].weight, stats_of(model, x), WeightOnlyConfig(**grid))
    assert 0.2 <= alpha <= 0.6 and errors.index(min(errors)) == round(alpha * 20)  # measured 0.30..0.50
    s = parts["input_scale"]
    others = [j for j in range(64) if j not in OUTLIERS]
    assert bool((s[OUTLIERS].min() > 2 * s[others].max()))  # the salient columns are scaled up
    # apply's statistics sum the same rows in another (shuffled) order
    assert torch.allclose(q.parts["0"]["input_scale"], s, rtol=1e-5)


def test_input_scale_normalisation_and_dead_inputs():
    mag = torch.tensor([4.0, 1.0, 0.0, 0.25, 16.0])
    s = input_scale(mag, 0.5)
    live = mag > 0
    assert float(s[live].log().mean()) == pytest.approx(0.0, abs=1e-6)  # geometric mean 1 over live inputs
    assert s[2] == 1.0  # never fires: plain rounding
    # sqrt of 4, 1, 0.25, 16 is 2, 1, 0.5, 4, of geometric mean 4^(1/4) = sqrt(2)
    assert torch.allclose(s[live], mag[live].sqrt() / math.sqrt(2), rtol=1e-6)
    assert bool((torch.diff(s[[3, 1, 0, 4]]) > 0).all())


# -- storage and end to end ------------------------------------------------------------------------
LINEARS = ("1", "3", "5")  # the digits MLP: Linear 64->64, 64->32, 32->10


def test_packed_storage_with_input_scales_bytes_and_exact_reload(digits_task, tmp_path):
    cfg = AWQConfig(bits=4, mode="affine", granularity="group", group_size=16, num_batches=4, batch_size=64)
    q = effdl.apply(digits_task, cfg)
    assert q.quantized_modules == LINEARS
    tensors = model_tensors(q)
    nbytes = {k: t.numel() * t.element_size() for k, t in tensors.items() if ".weight." in k}
    packed = (64 * 64 + 32 * 64 + 10 * 32) * 4 // 8  # 4-bit codes, 3232 bytes
    groups = 64 * 4 + 32 * 4 + 10 * 2  # one per 16 inputs of a row
    zero_points = math.ceil(256 * 4 / 8) + math.ceil(128 * 4 / 8) + math.ceil(20 * 4 / 8)  # 4-bit, packed per layer
    input_scales = 4 * (64 + 64 + 32)  # one float32 per input of each layer
    assert sum(v for k, v in nbytes.items() if k.endswith(".packed")) == packed == 3232
    assert sum(v for k, v in nbytes.items() if k.endswith(".scale")) == 4 * groups == 1616
    assert sum(v for k, v in nbytes.items() if k.endswith(".zero_point")) == zero_points == 202
    assert sum(v for k, v in nbytes.items() if k.endswith(".input_scale")) == input_scales == 640
    assert sum(nbytes.values()) == 3232 + 1616 + 202 + 640

    save_compact(tensors, tmp_path / "m.safetensors")
    fresh = copy.deepcopy(digits_task.model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    back = load_awq(fresh, load_compact(tmp_path / "m.safetensors"), cfg)
    assert isinstance(back, AWQModel)
    for (k, a), (_, b) in zip(q.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, b), k
    x = digits_task.example_input(32)
    assert torch.equal(q(x), back(x))

    no_scales = {k: t for k, t in load_compact(tmp_path / "m.safetensors").items() if not k.endswith(".input_scale")}
    with pytest.raises(ArtifactError, match="not quantize.awq's"):
        load_awq(copy.deepcopy(digits_task.model), no_scales, cfg)


def test_digits_mlp_end_to_end(digits_task):
    before = {k: v.clone() for k, v in digits_task.model.state_dict().items()}
    x = torch.cat(digits_task.calibration_batches(4, 64))
    grid = {"bits": 3, "granularity": "group", "group_size": 16}
    rtn = effdl.apply(digits_task, WeightOnlyConfig(**grid, mode="affine"))
    q = effdl.apply(digits_task, AWQConfig(**grid, num_batches=4, batch_size=64))
    assert all(torch.equal(v, digits_task.model.state_dict()[k]) for k, v in before.items())  # input untouched
    assert output_error(digits_task.model, q, x) <= output_error(digits_task.model, rtn, x) * (1 + 1e-6)
    acc = digits_task.evaluate(digits_task.model, "test")["accuracy"]
    assert acc - digits_task.evaluate(q, "test")["accuracy"] < 0.03


def test_tiny_llama_on_austen_end_to_end():
    task = tiny_llama()
    q = effdl.apply(task, AWQConfig(bits=3, granularity="group", group_size=16, num_batches=2, batch_size=4))
    assert len(q.quantized_modules) == 15 and all(p["input_scale"].shape == (p_in,) for p, p_in in
                                                  ((q.parts[n], task.model.get_submodule(n).in_features)
                                                   for n in q.quantized_modules))
    assert math.isfinite(task.evaluate(q, "test")["nll"])


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,match", [(0, "binary"), (1, "binary"), (17, "wider"), (2.5, "whole number"),
                                        (12, "quantize.weights")])
def test_bad_bits_are_refused_naming_the_fix(bits, match):
    with pytest.raises(ConfigError, match=match):
        AWQConfig(bits=bits)


def test_bad_settings_and_data_are_refused(digits_task):
    for bad in ({"grid": 1}, {"group_size": 1, "granularity": "group"}, {"mode": "asymmetric"}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AWQConfig(**bad)
    with pytest.raises(ConfigError, match="needs group_size"):
        AWQConfig(granularity="group")
    with pytest.raises(ConfigError, match="needs calibration data"):
        effdl.apply(digits_task.model, AWQConfig())
    model, x = one_layer(16, 64), outlier_inputs(256, 64)
    with torch.no_grad():
        model[0].weight[2, 2] = float("inf")
    with pytest.raises(ConfigError, match="NaN/Inf in the weights"):
        effdl.apply(task_on(model, x), AWQConfig())
    empty = task_on(one_layer(16, 64), x)
    empty.calibration_batches = lambda n, batch_size: []
    with pytest.raises(DataError, match="real inputs from the train split"):
        effdl.apply(empty, AWQConfig())
