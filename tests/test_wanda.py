"""prune.wanda, and the contract it shares with prune.sparsegpt (calibrated.py): the parametrised
tests at the end run on both methods."""
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import effdl
from effdl.compress.layer_stats import input_stats
from effdl.compress.prune import SparseGPTConfig, WandaConfig
from effdl.compress.prune.calibrated import plan_stages
from effdl.compress.prune.granularity import Granularity
from effdl.compress.prune.wanda import wanda_mask, wanda_scores
from effdl.core.errors import ConfigError, DataError
from effdl.core.io import load_state_into
from effdl.core.registry import config_from_dict
from effdl.deploy.storage import load_compact, model_tensors, save_compact

METHODS = {"wanda": WandaConfig, "sparsegpt": SparseGPTConfig}


def task_on(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> effdl.Classification:
    """A classification task whose train split is ``x`` (labels unused by one-shot pruning)."""
    num_classes = num_classes or model(x[:1]).shape[-1]
    data = TensorDataset(x, torch.arange(len(x)) % num_classes)
    return effdl.Classification(model, data, data, data, num_classes=num_classes, batch_size=len(x))


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def nm_kept(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zeros in every group of ``m`` consecutive inputs, (rows, groups)."""
    return (weight.detach() != 0).reshape(weight.shape[0], -1, m).sum(-1)


# -- Wanda itself ----------------------------------------------------------------------------------

# X: 3 rows of 4 features with column norms 3, 1, 5, 2 by construction
X_HAND = torch.tensor([[1.0, 0, 0, 2], [2, 0, 3, 0], [2, 1, 4, 0]])
W_HAND = torch.tensor([[1.0, -2, 3, 0.5], [-4, 1, 1, 2]])


def test_scores_are_weight_times_input_norm_by_hand():
    lin = nn.Linear(4, 2, bias=False)
    stats = input_stats(lin, {"l": lin}, [X_HAND], hessian=False)["l"]
    assert torch.allclose(stats.col_norm(), torch.tensor([3.0, 1, 5, 2]), atol=1e-6)
    # |W| * ||X_j||: row 0 = 1*3, 2*1, 3*5, 0.5*2; row 1 = 4*3, 1*1, 1*5, 2*2
    want = torch.tensor([[3.0, 2, 15, 1], [12, 1, 5, 4]])
    assert torch.allclose(wanda_scores(W_HAND, stats.col_norm()), want, atol=1e-6)


def test_apply_keeps_the_top_scores_of_every_row_by_hand():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W_HAND)
    out = effdl.apply(task_on(model, X_HAND), WandaConfig(sparsity=0.5, num_batches=1))
    # row 0 keeps 15 and 3 (cols 2, 0), row 1 keeps 12 and 5 (cols 0, 2); magnitude would have
    # kept -2 and 3 in row 0 and -4 and 2 in row 1
    assert out[0].weight.tolist() == [[1.0, 0.0, 3.0, 0.0], [-4.0, 0.0, 1.0, 0.0]]
    assert torch.equal(model[0].weight, W_HAND)  # the caller's model is untouched


def test_odd_count_goes_to_the_rows_where_it_costs_least():
    # 3 of 8 weights: one per row, and the third from the row whose second-lowest score is lowest
    scores_w = torch.tensor([[1.0, 2, 9, 9], [1, 5, 9, 9]])
    keep = wanda_mask(scores_w, torch.ones(4), 3 / 8, Granularity())
    assert keep.tolist() == [[False, False, True, True], [False, True, True, True]]


def test_dead_inputs_go_first_and_kept_weights_keep_their_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(64, 8)
    x[:, [1, 5]] = 0.0  # two inputs that never fire
    before = model[0].weight.detach().clone()
    out = effdl.apply(task_on(model, x), WandaConfig(sparsity=0.25, num_batches=1))
    w = out[0].weight.detach()
    assert bool((w[:, [1, 5]] == 0).all()) and int((w == 0).sum()) == 8
    kept = w != 0
    assert torch.equal(w[kept], before[kept]) and torch.equal(out[0].bias, model[0].bias)  # no update


def test_sequential_measures_each_layer_after_the_earlier_ones_are_pruned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(64, 8)
    w0, w1 = model[0].weight.detach(), model[2].weight.detach()
    g = Granularity()
    p0 = w0 * wanda_mask(w0, x.pow(2).sum(0).sqrt(), 0.5, g)
    pruned_h = torch.relu(x @ p0.T + model[0].bias.detach())
    dense_h = torch.relu(model[0](x)).detach()
    for sequential, h in ((True, pruned_h), (False, dense_h)):
        out = effdl.apply(task_on(model, x), WandaConfig(sparsity=0.5, num_batches=1, batch_size=64, sequential=sequential))
        assert torch.equal(out[0].weight, p0)
        assert torch.equal(out[2].weight != 0, wanda_mask(w1, h.pow(2).sum(0).sqrt(), 0.5, g)), sequential


def test_stages_are_transformer_blocks_then_the_head():
    from effdl.testing import model_kind

    task = model_kind("decoder")
    layers = linears(task.model)
    stages = plan_stages(task.model, layers, task.calibration_batches(1, 2)[0], sequential=True)
    names = [s for s, _ in stages]
    assert len(names) == 3 and [len(s) for s in names] == [7, 7, 1]
    assert all(n.startswith("backbone.model.layers.0.") for n in names[0]) and names[2] == ["backbone.lm_head"]
    # each block's pass stops where the next block's first projection is called; the head's runs to the end
    assert stages[0][1] is layers[names[1][0]] and stages[2][1] is None


# -- the contract both methods share ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_x():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), torch.randn(128, 16)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_keeps_exactly_n_of_every_m_inputs(method, n, m, mlp_x):
    model, x = mlp_x
    out = effdl.apply(task_on(model, x), METHODS[method](pattern="n:m", n=n, m=m, num_batches=1))
    for name, lin in linears(out).items():
        assert bool((nm_kept(lin.weight, m) == n).all()), name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_each_layer_loses_exactly_the_requested_share(method, sparsity, mlp_x):
    model, x = mlp_x
    out = effdl.apply(task_on(model, x), METHODS[method](sparsity=sparsity, num_batches=1))
    for name, lin in linears(out).items():
        assert int((lin.weight == 0).sum()) == round(sparsity * lin.weight.numel()), name
        assert not bool(torch.signbit(lin.weight[lin.weight == 0]).any())  # +0.0, as compact storage counts zeros


@pytest.mark.parametrize("method", METHODS)
def test_sparsity_zero_is_a_bit_identical_noop_without_data(method, mlp_x):
    model, _ = mlp_x
    out = effdl.apply(model, METHODS[method](sparsity=0.0))
    assert out is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.uint8), out.state_dict()[k].view(torch.uint8)), k  # bytes: -0.0 counts


@pytest.mark.parametrize("method", METHODS)
def test_out_of_range_settings_are_config_errors_like_magnitude(method):
    cls = METHODS[method]
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="sparsity"):
            cls(sparsity=bad)
        with pytest.raises(ConfigError, match="sparsity"):
            effdl.prune.Magnitude(sparsity=bad)
    with pytest.raises(ConfigError, match=r"N:M sparsity needs 1 <= N < M.*use e.g. n=2, m=4"):
        cls(pattern="n:m", n=4, m=2)
    with pytest.raises(ConfigError, match=r"1:4 sparsity is fixed at 0.75: set sparsity=0.75"):
        cls(pattern="n:m", n=1, m=4)
    assert cls(pattern="n:m", n=1, m=4, sparsity=0.75).granularity().fixed_sparsity == 0.75


@pytest.mark.parametrize("method", METHODS)
def test_m_not_dividing_the_inputs_names_the_layer_and_the_fix(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    task = task_on(model, torch.randn(32, 8))
    with pytest.raises(ConfigError, match=r"layer '2'.*\(6 .*not divisible by M=4.*exclude=\('2',\)"):
        effdl.apply(task, METHODS[method](pattern="n:m", num_batches=1))
    out = effdl.apply(task, METHODS[method](pattern="n:m", num_batches=1, exclude=("2",)))
    assert bool((nm_kept(out[0].weight, 4) == 2).all()) and bool((out[2].weight != 0).all())


@pytest.mark.parametrize("method", METHODS)
def test_no_calibration_data_is_a_typed_error(method, mlp_x):
    model, x = mlp_x
    with pytest.raises(ConfigError, match="needs calibration data: pass a Task"):
        effdl.apply(model, METHODS[method]())

    class NoCalibration(effdl.Classification):
        def calibration_batches(self, n, batch_size=32):
            return []

    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    task = NoCalibration(model, data, data, num_classes=8)
    with pytest.raises(DataError, match=r"calibration_batches gave no input: it needs real inputs from the train split"):
        effdl.apply(task, METHODS[method]())


@pytest.mark.parametrize("method", METHODS)
def test_applying_twice_changes_nothing(method, mlp_x):
    model, x = mlp_x
    cfg = METHODS[method](sparsity=0.5, num_batches=1)
    once = effdl.apply(task_on(model, x), cfg)
    twice = effdl.apply(task_on(once, x), cfg)
    for k, v in once.state_dict().items():
        assert torch.equal(v, twice.state_dict()[k]), k


@pytest.mark.parametrize("method", METHODS)
def test_protect_first_last_and_conv_layers_stay_dense(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                          nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    task = task_on(model, torch.randn(32, 1, 4, 4))

    def dense(out):
        return {n for n, mod in out.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear)) and bool((mod.weight != 0).all())}

    with pytest.warns(UserWarning, match=r"prunes nn.Linear layers only: 1 Conv layer\(s\) left dense \(0\)"):
        out = effdl.apply(task, METHODS[method](num_batches=1))
    assert dense(out) == {"0"}
    out = effdl.apply(task, METHODS[method](num_batches=1, protect_first_last=True))  # the conv is the first: no warning
    assert dense(out) == {"0", "7"}  # the conv (first) and the classifier (last)
    assert int((out[3].weight == 0).sum()) == 512 and int((out[5].weight == 0).sum()) == 64


@pytest.mark.parametrize("method", METHODS)
def test_end_to_end_on_digits_measures_and_reloads_like_magnitude(method, digits, digits_task, tmp_path):
    cfg = METHODS[method](sparsity=0.5, num_batches=4)
    pruned = effdl.apply(digits_task, cfg)
    m = effdl.measure(digits_task.with_model(pruned), batch_sizes=(1,))
    dense_acc = digits_task.evaluate(digits_task.model, "test")["accuracy"]
    assert m["status"] == "ok" and m["quality"]["accuracy"] >= dense_acc - 0.10, (m["quality"], dense_acc)
    layers = m["footprint"]["layers"]
    for name in linears(pruned):
        assert layers[name]["sparsity"] == pytest.approx(0.5, abs=1e-9), name
    # stored like prune.magnitude's result: plain tensors, compact on disk, bit-identical back
    mag = effdl.apply(digits_task, effdl.prune.Magnitude(sparsity=0.5, scope="layer"))
    size = save_compact(model_tensors(pruned), tmp_path / "m.safetensors")
    assert size == pytest.approx(save_compact(model_tensors(mag), tmp_path / "mag.safetensors"), rel=0.01)
    assert size < save_compact(model_tensors(digits_task.model), tmp_path / "dense.safetensors")
    back = load_state_into(effdl.zoo.build("mlp", input_shape=digits.input_shape, num_classes=10, hidden=(64, 32)),
                           load_compact(tmp_path / "m.safetensors"), "m.safetensors").eval()
    x = digits_task.example_input(16)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))
    assert config_from_dict(cfg.to_dict()) == cfg  # the recipe step replays
