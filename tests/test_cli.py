"""The command line on bad input: one clear line, exit code 2, no traceback, nothing half-written."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ENV = {**os.environ, "EFFDL_NO_REEXEC": "1"}


def effdl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "effdl.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def _assert_clean_error(r, *needles):
    assert r.returncode == 2, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    text = " ".join(r.stderr.split())
    for n in needles:
        assert n in text, text


def test_unknown_zoo_name(tmp_path):
    r = effdl("measure", "--model", "zoo:lenet", "--data", "digits")
    _assert_clean_error(r, "lenet", "Did you mean")


def test_unknown_data_name():
    r = effdl("measure", "--model", "zoo:mlp", "--data", "mnsit")
    _assert_clean_error(r, "mnsit", "Did you mean 'mnist'")


def test_missing_weights(tmp_path):
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(tmp_path / "nope.safetensors"))
    _assert_clean_error(r, "does not exist")


def test_corrupt_weights(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1000)}, str(p))
    p.write_bytes(p.read_bytes()[:200])  # truncated
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(p))
    _assert_clean_error(r, "corrupt or truncated")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"state_dict": _Evil(str(marker))}))
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(p))
    _assert_clean_error(r, "pickle", "--allow-pickle")
    assert not marker.exists()
    # even when allowed, loading is weights-only: the payload still does not run
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(p), "--allow-pickle")
    assert r.returncode == 2 and not marker.exists()


def test_model_forward_fails_on_data_shape(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(10, 10)\n")
    r = effdl("measure", "--model", f"{f}:make", "--data", "digits")
    _assert_clean_error(r, "forward fails on the data's input shape")


@pytest.mark.parametrize("dtype", ["half", "bfloat16"])
def test_a_half_precision_model_is_named_as_such_not_blamed_on_the_input_shape(tmp_path, dtype):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn as nn\n"
                 f"def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(getattr(__import__('torch'), '{dtype}'))\n")
    r = effdl("measure", "--model", f"{f}:make", "--data", "digits")
    name = "float16" if dtype == "half" else "bfloat16"
    _assert_clean_error(r, f"the model holds {name} tensors ('1.weight' and 1 more)", "model.float()")
    assert "input shape" not in r.stderr


def test_recipe_typo_suggests_and_writes_nothing(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:mlp\ndata: digits\nsteps:\n  - technique: prune.magnitude\n    sparsty: 0.5\n")
    out = tmp_path / "out"
    r = effdl("apply", str(recipe), "--out", str(out))
    _assert_clean_error(r, "unknown key 'sparsty'", "Did you mean 'sparsity'")
    assert not out.exists()


def test_recipe_sparsity_out_of_range(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:mlp\ndata: digits\nsteps:\n  - technique: prune.magnitude\n    sparsity: 1.0\n")
    r = effdl("apply", str(recipe), "--out", str(tmp_path / "o"))
    _assert_clean_error(r, "sparsity")


def test_debug_shows_traceback():
    r = effdl("--debug", "measure", "--model", "zoo:lenet", "--data", "digits")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_techniques_json_lists_fields():
    r = effdl("techniques", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    fields = {f["name"]: f for f in data["prune.magnitude"]["fields"]}
    assert fields["sparsity"]["default"] == 0.5
    assert {"quantize.ptq", "learn.distill"} <= set(data)


def test_apply_recipe_saves_and_measures(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:mlp\ndata: digits\nsteps:\n  - technique: prune.magnitude\n    sparsity: 0.5\n")
    out = tmp_path / "out"
    r = effdl("apply", str(recipe), "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "measurement.json").read_text())
    assert m["status"] == "ok"
    assert m["footprint"]["nonzero_params"] < 0.55 * m["footprint"]["params"]
    assert (out / "model.safetensors").is_file() and (out / "recipe.json").is_file()
    assert json.loads((out / "structure.json").read_text())["layers"]["1"]["out_features"] == 300
    assert not [p for p in out.rglob("*.tmp")]
    from effdl.core.io import sha256_file

    recorded = json.loads((out / "recipe.json").read_text())["sha256"]
    assert recorded == {f: sha256_file(out / f) for f in ("model.safetensors", "structure.json")}


def test_weights_are_checked_against_the_manifest_beside_them(tmp_path):
    from effdl.core.io import sha256_file
    from effdl.zoo import build

    w = tmp_path / "w.safetensors"
    save_file(build("mlp", input_shape=(1, 8, 8), num_classes=10).state_dict(), str(w))
    (tmp_path / "recipe.json").write_text(json.dumps({"steps": [], "sha256": {"w.safetensors": sha256_file(w)}}))
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(w), "--runtime", "eager")
    assert r.returncode == 0, r.stderr
    assert "integrity is not checked" not in r.stderr
    blob = bytearray(w.read_bytes())
    blob[-3] ^= 0x01  # one flipped bit in a weight: safetensors alone would load it silently
    w.write_bytes(bytes(blob))
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(w), "--runtime", "eager")
    _assert_clean_error(r, "does not match the sha256 recorded in recipe.json", "Re-export it")
    (tmp_path / "recipe.json").unlink()  # no manifest: loaded, and said plainly
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(w), "--runtime", "eager")
    assert r.returncode == 0, r.stderr
    assert "no sha256 in a recipe.json beside it, so its integrity is not checked" in " ".join(r.stderr.split())


def test_synthetic_data_is_latency_only():
    r = effdl("measure", "--model", "zoo:resnet8", "--data", "synthetic:3x16x16", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["quality"] == {} and m["data"].startswith("synthetic")
    assert m["footprint"]["params"] > 0
    assert m["runtime_result"]["latency_by_batch"]["1"]["p50_ms"] > 0
    r = effdl("optimize", "--model", "zoo:mlp", "--data", "synthetic:1x8x8", "--out", "unused")
    _assert_clean_error(r, "synthetic", "optimizing needs real data")


def test_optimize_help_documents_the_drop_options():
    r = effdl("optimize", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "--relative-drop" in text and "relative to the baseline" in text and "--lower-is-better" in text


def test_bad_goal_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    r = effdl("optimize", "--model", "zoo:mlp", "--data", "digits", "--target", "speed", "--out", str(out))
    _assert_clean_error(r, "invalid goal", "target")
    r = effdl("optimize", "--model", "zoo:mlp", "--data", "digits", "--metric", "top5", "--out", str(out))
    _assert_clean_error(r, "'top5' is not the task's primary metric", "--higher-is-better")
    assert not out.exists()


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for cmd in (["optimize", "--model", "zoo:mlp", "--data", "digits"], ["apply", "recipes/prune-distill-int8.yaml"]):
        r = effdl(*cmd, "--out", str(f), cwd=Path(__file__).resolve().parents[1])
        _assert_clean_error(r, "is an existing file")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root may write anywhere: the check cannot fail there
        r = effdl("optimize", "--model", "zoo:mlp", "--data", "digits", "--out", str(locked / "run"))
        _assert_clean_error(r, "cannot write under")
    assert f.read_text() == "x"


def test_bad_runtime_and_threads_are_refused_before_any_work():
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--threads", "0")
    _assert_clean_error(r, "--threads must be >= 1")
    r = effdl("measure", "--model", "zoo:mlp", "--data", "digits", "--runtime", "onnx")
    _assert_clean_error(r, "unknown runtime 'onnx'", "Valid runtimes")


def test_a_failed_measurement_exits_1_and_apply_output_is_one_unit(tmp_path):
    recipe = tmp_path / "int8.yaml"
    recipe.write_text("model: zoo:mlp\ndata: digits\nsteps:\n  - {technique: quantize.ptq}\n")
    out = tmp_path / "run"
    r = effdl("apply", str(recipe), "--out", str(out))  # an INT8 model on the default eager runtime
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "the measurement on eager failed" in " ".join(r.stderr.split())
    first = json.loads((out / "measurement.json").read_text())
    assert first["status"] == "failed"
    r = effdl("apply", str(recipe), "--runtime", "ort-int8", "--out", str(out))  # again into the same folder
    assert r.returncode == 0, r.stderr
    second = json.loads((out / "measurement.json").read_text())
    assert second["status"] == "ok" and second["runtime"] == "ort-int8"
    assert not (out / "eager").exists()  # nothing left from the first run: the folder is one run's
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
