"""Every named strategy gives valid, distinct candidates, and every recipe of the families that
reach techniques only Python reached before runs on a real model (with tiny training budgets)."""
from __future__ import annotations

import pytest

from effdl.core.errors import ConfigError
from effdl.pipeline.recipe import apply_recipe
from effdl.pipeline.strategies import STRATEGIES, candidates_for, load_candidates
from effdl.zoo import build


def test_every_strategy_lists_distinct_candidates_with_a_plain_baseline():
    cnn = build("lenet5", input_shape=(1, 28, 28), num_classes=10)
    for name in STRATEGIES:
        specs = candidates_for(name, model=cnn)
        assert specs[0].recipe.steps == () and specs[0].runtimes == ("eager",)
        assert len({s.id for s in specs}) == len(specs) and len({s.label for s in specs}) == len(specs)


@pytest.mark.parametrize("strategy", ["quantization", "sparse-training", "lowrank", "learning"])
def test_family_recipes_run_on_a_real_model(strategy, digits_task):
    specs = candidates_for(strategy, task=digits_task, finetune_epochs=0.05, distill_epochs=0.05)
    ran = 0
    for spec in specs[2:]:
        model = apply_recipe(digits_task, spec.recipe)
        assert model(digits_task.example_input(2)).shape == (2, 10), spec.label
        ran += 1
    assert ran == len(specs) - 2


def test_family_strategies_refuse_text_tasks_and_candidate_files(tmp_path, digits_task):
    class TextLike:
        kind, model = "causal-lm", digits_task.model

    with pytest.raises(ConfigError, match="is for classification tasks, not causal-lm"):
        candidates_for("quantization", task=TextLike())
    good = tmp_path / "c.yaml"
    good.write_text("- {steps: []}\n- {label: int8, steps: [{technique: quantize.ptq}], runtimes: [ort-int8]}\n")
    specs = load_candidates(good)
    assert [s.id for s in specs] == ["c00", "c01"] and specs[0].label == "baseline" and specs[1].runtimes == ("ort-int8",)
    bad = tmp_path / "b.yaml"
    bad.write_text("- {label: x, steps: [{technique: quantize.ptq}]}\n")
    with pytest.raises(ConfigError, match="the first candidate is the baseline"):
        load_candidates(bad)
    bad.write_text("- {steps: [], extra: 1}\n")
    with pytest.raises(ConfigError, match="a mapping with 'steps'"):
        load_candidates(bad)


def test_the_text_grid_prunes_heads_and_ffn_neurons_of_an_encoder():
    from effdl.testing import model_kind

    task = model_kind("encoder")
    specs = candidates_for("shrink-and-improve", task=task, distill_epochs=0.05)
    labels = [s.label for s in specs]
    assert "heads -25% + distill" in labels and "FFN -25% + distill" in labels
    ffn = next(s for s in specs if s.label == "FFN -25% + distill")
    model = apply_recipe(task, ffn.recipe)
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if n.endswith(("intermediate.dense", "query"))}
    before = {n: tuple(m.weight.shape) for n, m in task.model.named_modules() if n in shapes}
    for n, s in shapes.items():  # FFN width 64 -> 48; attention untouched
        assert s == ((48, 32) if n.endswith("intermediate.dense") else before[n]), (n, s)
    assert model(task.example_input(2)).shape == task.model(task.example_input(2)).shape
