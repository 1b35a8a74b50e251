"""Property-based fuzzing of what users type: technique configs, recipe files and command-line
options. Whatever the input, effdl answers with a valid object or its own typed error (exit 2 on the
command line), never another exception or a traceback, and never a half-written output directory."""
from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from effdl.cli import app
from effdl.core.errors import EffdlError
from effdl.core.registry import config_from_dict, techniques
from effdl.pipeline.recipe import Recipe

NAMES = sorted(techniques())
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "static", "dynamic", "l1", "global", "bf16", "int8", "../x", "*", ""]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def technique_dicts(draw):
    """A technique name and values for some of its real fields (plus, sometimes, a misspelt one)."""
    name = draw(st.sampled_from(NAMES))
    fields = sorted(techniques()[name].config.model_fields)
    keys = draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)) if fields else []
    data = {k: draw(VALUES) for k in keys}
    if draw(st.booleans()) and fields:
        data[draw(st.sampled_from(fields)) + draw(st.sampled_from(["", "s", "_"]))] = draw(VALUES)
    return {"technique": name, **data}


@FUZZ
@given(technique_dicts())
def test_any_technique_config_is_valid_or_a_config_error(data):
    try:
        cfg = config_from_dict(data)
    except EffdlError:
        return
    # accepted: it round-trips, and holds no non-finite number the field did not ask for
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


@FUZZ
@given(st.one_of(VALUES, st.dictionaries(st.sampled_from(["steps", "model", "data", "stepz"]), VALUES, max_size=3),
                 st.builds(lambda steps: {"steps": steps}, st.lists(st.one_of(technique_dicts(), VALUES), max_size=3))))
def test_any_recipe_mapping_is_a_recipe_or_a_config_error(data):
    try:
        recipe = Recipe.from_dict(data)
    except EffdlError:
        return
    assert Recipe.from_dict(recipe.to_dict()).steps == recipe.steps


@FUZZ
@given(st.text(max_size=200))
def test_any_recipe_file_text_is_a_recipe_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(text)
    try:
        Recipe.load(path)
    except EffdlError:
        pass


OPTIONS = {  # each option with values a user might type, good and bad
    "--max-drop": ["0.01", "-1", "nan", "inf", "2", "abc", "0"],
    "--target": ["latency", "size", "speed", ""],
    "--batch-size": ["1", "0", "-3", "2.5", "999999"],
    "--threads": ["2", "0", "-1", "x"],
    "--repeats": ["30", "0", "-5"],
    "--budget": ["100", "-1", "0", "nan"],
    "--latency-tie": ["0.05", "-0.1", "5"],
    "--runtimes": ["eager", "ort,eager", "../../x", "", "tpu"],
    "--search": ["tpe", "grid", "bayes", ""],
    "--trials": ["30", "0", "-2"],
    "--objectives": ["latency,size", "accuracy", ""],
    "--pruner": ["none", "median", "sometimes"],
    "--eval-limit": ["10", "0", "-1"],
    "--metric": ["accuracy", "bleu"],
    "--strategy": ["broad", "everything"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.sampled_from(OPTIONS[k]) for k in keys})))
def test_optimize_options_never_crash_and_write_nothing(tmp_path, opts):
    out = tmp_path / "fuzz-out"
    args = ["optimize", "--model", "zoo:no-such-model", "--data", "digits", "--out", str(out)]
    for k, v in opts.items():
        args += [k, v]
    result = CliRunner().invoke(app, args)
    # a bad setting or, at the latest, the unknown model: a clean exit 2, never a crash
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert not out.exists() or not any(out.iterdir())


def test_nan_and_inf_settings_are_refused_by_name():
    for bad in (math.nan, math.inf):
        with pytest.raises(EffdlError):
            config_from_dict({"technique": "prune.magnitude", "sparsity": bad})
    assert yaml.safe_load("sparsity: .nan")["sparsity"] != 0  # YAML can spell NaN: the test above matters
