"""Search spaces from the technique configs' declared constraints, and the hypervolume."""
import math

import optuna
import pytest

from effdl.automate.hypervolume import hypervolume, normalised, reference_point
from effdl.automate.space import Choice, FloatRange, IntRange, SearchSpace, field_dist
from effdl.compress.prune import MagnitudeConfig
from effdl.compress.quantize import PTQConfig
from effdl.core.errors import ConfigError
from effdl.learn import DistillConfig


def test_auto_reads_the_declared_constraints():
    # sparsity: ge=0, lt=1 -> [0, the float just below 1]
    d = field_dist(MagnitudeConfig, "sparsity", "auto")
    assert d == FloatRange(0.0, math.nextafter(1.0, 0.0))
    assert field_dist(MagnitudeConfig, "rounds", "auto") == IntRange(1, 50)  # ge=1, le=50
    assert field_dist(MagnitudeConfig, "schedule", "auto") == Choice(("oneshot", "iterative"))
    assert field_dist(PTQConfig, "calibration", "auto") == Choice(("minmax", "percentile", "entropy", "mse"))
    assert field_dist(PTQConfig, "fold_bn", "auto") == Choice((False, True))
    assert field_dist(DistillConfig, "alpha", "auto") == FloatRange(0.0, 1.0)  # ge=0, le=1
    # percentile: gt=90 (open) .. le=100
    assert field_dist(PTQConfig, "percentile", "auto") == FloatRange(math.nextafter(90.0, 100.0), 100.0)


def test_an_open_ended_field_needs_an_explicit_range():
    with pytest.raises(ConfigError, match="no upper bound.*range"):
        field_dist(MagnitudeConfig, "finetune_epochs", "auto")
    assert field_dist(MagnitudeConfig, "finetune_epochs", {"range": [0.5, 4]}) == FloatRange(0.5, 4.0)
    assert field_dist(DistillConfig, "lr", {"range": [1e-4, 1e-2], "log": True}) == FloatRange(1e-4, 1e-2, True)


def test_ranges_and_choices_are_checked_against_the_config():
    with pytest.raises(ConfigError, match="sparsity"):  # lt=1: each end is checked as a whole config
        SearchSpace.from_list([{"technique": "prune.magnitude", "sparsity": {"range": [0.5, 1.5]}}])
    with pytest.raises(ConfigError, match="low < high"):
        field_dist(MagnitudeConfig, "sparsity", {"range": [0.9, 0.5]})
    with pytest.raises(ConfigError, match="log range needs low > 0"):
        field_dist(MagnitudeConfig, "lr", {"range": [0, 1], "log": True})
    with pytest.raises(ConfigError, match="schedule"):
        SearchSpace.from_list([{"technique": "prune.magnitude", "schedule": {"choices": ["oneshot", "weekly"]}}])
    with pytest.raises(ConfigError, match="group_size"):  # cross-field rules too: channel granularity takes no group
        SearchSpace.from_list([{"technique": "quantize.weights", "granularity": "channel",
                                "group_size": {"choices": [32, 64]}}])
    with pytest.raises(ConfigError, match="not a number"):
        field_dist(MagnitudeConfig, "schedule", {"range": [0, 1]})


SPACE = [
    {"name": "shrink", "optional": True, "one_of": [
        {"technique": "prune.magnitude", "sparsity": {"range": [0.3, 0.95]}, "finetune_epochs": 1.0},
        {"technique": "prune.channels", "ratio": {"range": [0.1, 0.7]}}]},
    {"technique": "quantize.ptq", "calibration": {"choices": ["minmax", "percentile"]}},
]


def test_a_trial_samples_exactly_the_recipe_of_its_parameters():
    space = SearchSpace.from_list(SPACE)
    trial = optuna.trial.FixedTrial({"shrink": "prune.magnitude", "prune.magnitude.sparsity": 0.8,
                                     "quantize.ptq.calibration": "percentile"})
    recipe = space.suggest(trial)
    assert recipe.steps == (MagnitudeConfig(sparsity=0.8, finetune_epochs=1.0), PTQConfig(calibration="percentile"))
    left_out = space.suggest(optuna.trial.FixedTrial({"shrink": "none", "quantize.ptq.calibration": "minmax"}))
    assert left_out.steps == (PTQConfig(),)


def test_sampled_floats_are_rounded_to_three_digits_inside_the_range():
    space = SearchSpace.from_list(SPACE)
    recipe = space.suggest(optuna.trial.FixedTrial({"shrink": "prune.channels", "prune.channels.ratio": 0.123456789,
                                                    "quantize.ptq.calibration": "minmax"}))
    assert recipe.steps[0].ratio == 0.123


def test_space_round_trips_as_data():
    space = SearchSpace.from_list(SPACE)
    assert SearchSpace.from_list(space.to_list()) == space


def test_bad_spaces_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="empty"):
        SearchSpace.from_list([])
    with pytest.raises(ConfigError, match="nothing to search"):
        SearchSpace.from_list([{"technique": "quantize.ptq"}])
    with pytest.raises(ConfigError, match="appears twice"):
        SearchSpace.from_list([{"technique": "quantize.ptq", "calibration": "auto"},
                               {"technique": "quantize.ptq", "optional": True}])
    with pytest.raises(ConfigError, match="sparsty"):  # unknown field: the config's own error, with the closest name
        SearchSpace.from_list([{"technique": "prune.magnitude", "sparsty": "auto"}])
    with pytest.raises(ConfigError, match="unknown technique|prune.magnitud"):
        SearchSpace.from_list([{"technique": "prune.magnitud", "sparsity": "auto"}])
    with pytest.raises(ConfigError, match="a search space is a list"):
        SearchSpace.from_list({"technique": "quantize.ptq"})


@pytest.mark.parametrize("kind", ["classification", "sentence-embedding", "text-classification", "causal-lm"])
def test_the_shipped_default_spaces_load(kind):
    from effdl.automate.space import default_space

    class _Kind:  # default_space only reads the task's kind
        pass

    t = _Kind()
    t.kind = kind
    space = default_space(t)
    assert len(space.slots) >= 2
    # every shipped space can be sampled: the first option of each slot, each field at its low end
    params = {}
    for s in space.slots:
        params[s.name] = s.options[0].technique
        for k, d in s.options[0].searched:
            params[f"{s.options[0].technique}.{k}"] = d.values[0] if isinstance(d, Choice) else d.low
    assert len(space.suggest(optuna.trial.FixedTrial(params)).steps) == len(space.slots)


def test_hypervolume_against_hand_computed_values():
    assert hypervolume([(1, 1)], (2, 2)) == 1.0
    assert hypervolume([(0, 1), (1, 0)], (2, 2)) == 3.0  # two 2x1 rectangles overlapping in a 1x1 square
    assert hypervolume([(0, 1), (1, 0), (1, 1)], (2, 2)) == 3.0  # a dominated point adds nothing
    assert hypervolume([(3, 0)], (2, 2)) == 0.0  # outside the reference box
    # 3-D: 0.5^3 + 1*0.1*0.1 - their overlap 0.5*0.1*0.1
    assert hypervolume([(0.5, 0.5, 0.5), (0, 0.9, 0.9)], (1, 1, 1)) == pytest.approx(0.13, abs=1e-12)
    assert hypervolume([], (1, 1)) == 0.0


def test_normalised_axes():
    # a drop of half the allowance at 40% of the baseline latency and 25% of its size
    assert normalised(0.005, 0.01, [0.4, 250], [1.0, 1000]) == pytest.approx((0.5, 0.4, 0.25))
    assert reference_point(2) == (2.0, 1.0, 1.0)


POLICY = [
    {"technique": "prune.weights", "distribution": "explicit", "layer_sparsity": {"per_layer": {"range": [0.1, 0.9]}}},
    {"name": "quantize", "optional": True, "technique": "quantize.ptq",
     "exclude": {"per_layer": {"choices": [False, True]}}},
]


def test_per_layer_fields_sample_one_value_per_layer(digits_task):
    from effdl.compress.prune import WeightPruneConfig, prunable_layer_names

    space = SearchSpace.from_list(POLICY)
    layers = prunable_layer_names(digits_task.model)
    assert len(layers) == 3
    params = {f"prune.weights.layer_sparsity.{n}": s for n, s in zip(layers, (0.2, 0.5, 0.85))}
    params.update({"quantize": "quantize.ptq", **{f"quantize.ptq.exclude.{n}": n == layers[-1] for n in layers}})
    recipe = space.suggest(optuna.trial.FixedTrial(params), digits_task.model)
    prune, ptq = recipe.steps
    assert prune == WeightPruneConfig(distribution="explicit", layer_sparsity=dict(zip(layers, (0.2, 0.5, 0.85))))
    assert ptq == PTQConfig(exclude=(layers[-1],))  # keep the classifier in FP32, quantize the rest
    assert SearchSpace.from_list(space.to_list()) == space
    with pytest.raises(ConfigError, match="needs the model"):
        space.suggest(optuna.trial.FixedTrial(params))


def test_per_layer_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match="not a per-layer field"):
        SearchSpace.from_list([{"technique": "prune.magnitude", "sparsity": {"per_layer": {"range": [0, 0.5]}}}])
    with pytest.raises(ConfigError, match="choices: \\[false, true\\]"):
        SearchSpace.from_list([{"technique": "quantize.ptq", "exclude": {"per_layer": {"range": [0, 1]}}}])


def test_the_sensitivity_seed_reproduces_the_one_shot_allocation(digits_task):
    from effdl.automate.policy import sensitivity_seed
    from effdl.compress.prune import sensitivity_allocation

    space = SearchSpace.from_list(POLICY)
    seed = sensitivity_seed(digits_task, space, 0.8)
    allocation = sensitivity_allocation(digits_task.model, digits_task, 0.8)
    assert {k.rsplit(".", 1)[-1]: v for k, v in seed.items()} == {n: min(max(r, 0.1), 0.9) for n, r in allocation.items()}
    recipe = space.suggest(optuna.trial.FixedTrial({**seed, "quantize": "none"}), digits_task.model)
    assert recipe.steps[0].policy == {n: min(max(r, 0.1), 0.9) for n, r in allocation.items()}
    with pytest.raises(ConfigError, match="no per-layer sparsity policy"):
        sensitivity_seed(digits_task, SearchSpace.from_list(SPACE), 0.8)


def test_seeds_are_checked_against_the_space_and_round_trip():
    data = {"slots": SPACE, "seeds": [{"shrink": "prune.magnitude", "prune.magnitude.sparsity": 0.9}]}
    space = SearchSpace.from_list(data)
    assert space.seeds == ({"shrink": "prune.magnitude", "prune.magnitude.sparsity": 0.9},)
    assert SearchSpace.from_list(space.to_list()) == space
    with pytest.raises(ConfigError, match="'prune.magnitude.sparsty' is not in the search space.*sparsity"):
        SearchSpace.from_list({"slots": SPACE, "seeds": [{"prune.magnitude.sparsty": 0.9}]})
    with pytest.raises(ConfigError, match=r"sparsity=0.99 is outside the search space: it must be in \[0.3, 0.95\]"):
        SearchSpace.from_list({"slots": SPACE, "seeds": [{"prune.magnitude.sparsity": 0.99}]})
    with pytest.raises(ConfigError, match="must be one of"):
        SearchSpace.from_list({"slots": SPACE, "seeds": [{"shrink": "prune.heads"}]})
    with pytest.raises(ConfigError, match="'slots' and optional 'seeds'"):
        SearchSpace.from_list({"slot": SPACE})


def test_the_shipped_classification_seeds_are_the_textbook_recipes():
    from effdl.automate.space import default_space

    class _Kind:
        kind = "classification"

    space = default_space(_Kind())
    labels = [space.suggest(optuna.trial.FixedTrial(p)).label() for p in space.seeds]
    assert labels[0] == ("prune.magnitude(sparsity=0.9,schedule=iterative,finetune_epochs=2.0) + "
                         "learn.distill(epochs=8.0) + quantize.ptq()")
    assert labels[1] == "prune.channels(finetune_epochs=2.0) + learn.distill(epochs=8.0) + quantize.float()"


def test_the_shipped_encoder_seeds_are_the_text_grids_recovered_int8_recipes():
    from effdl.automate.space import default_space
    from effdl.compress.prune import ChannelPruneConfig, HeadPruneConfig
    from effdl.compress.quantize import PTQConfig
    from effdl.learn import DistillConfig

    class _Kind:
        kind = "sentence-embedding"

    space = default_space(_Kind())
    recipes = [space.suggest(optuna.trial.FixedTrial(p)) for p in space.seeds]
    kd = DistillConfig(epochs=0.25, lr=2e-5, alpha=0.5)  # the text grid's distillation step
    heads, ffn = recipes[0].steps, recipes[1].steps
    assert heads == (HeadPruneConfig(ratio=0.25, batches=4), kd, PTQConfig(mode="dynamic"))
    assert isinstance(ffn[0], ChannelPruneConfig) and ffn[0].ratio == 0.25 and not ffn[0].protect_first
    assert ffn[1:] == (kd, PTQConfig(mode="dynamic"))
