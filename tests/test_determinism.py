"""The same `effdl optimize` command, run twice with the same seed and threads, gives the same
results.json (timings, dates and the machine's load aside) and the same chosen model, byte for byte.

Fine-tuning, distillation and INT8 calibration are all in the candidates, so every source of
randomness effdl controls (data order, calibration batches, init of nothing: the baseline is the
cached trained zoo model) is exercised. The goal is size: a latency goal's choice depends on timings.
"""
from __future__ import annotations

import json

from test_cli import effdl

CANDIDATES = """\
- {label: baseline, steps: []}
- label: prune 70% + fine-tune
  steps: [{technique: prune.magnitude, sparsity: 0.7, finetune_epochs: 1}]
- label: distill + int8
  steps: [{technique: learn.distill, epochs: 1}, {technique: quantize.ptq}]
- label: channels -50% + fine-tune
  steps: [{technique: prune.channels, ratio: 0.5, finetune_epochs: 1}]
"""
#: what depends on the clock or the machine's load, not on the computation (which runtimes the planner
#: tries, which is fastest and so what the chosen runtime loads, follow the timings too)
TIMING = {"runtimes", "deployed_bytes", "created", "environment", "seconds", "stage_seconds", "latency_by_batch", "latency_ms_p50",
          "latency_ms_p90", "throughput_per_s", "energy_uj", "peak_mem_bytes", "info", "provenance", "chosen_reason",
          "runtimes_skipped", "runtime", "frontier", "reused_from"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _run(tmp_path, name):
    cands = tmp_path / "cands.yaml"
    cands.write_text(CANDIDATES)
    out = tmp_path / name
    r = effdl("optimize", "--model", "zoo:mlp", "--data", "digits", "--candidates", str(cands), "--target", "size",
              "--max-drop", "0.03", "--threads", "1", "--runtimes", "eager,ort,ort-int8", "--repeats", "3",
              "--large-batch", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_two_runs_of_the_same_command_agree(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["chosen"] == rb["chosen"] and ra["chosen"] is not None
    ca, cb = _strip(ra["candidates"]), _strip(rb["candidates"])
    assert len(ca) == 4 and all(c["status"] == "ok" for c in ca)
    for x, y in zip(ca, cb):
        assert x == y, (x["id"], {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)})
    for x, y in zip(ra["candidates"], rb["candidates"]):  # a runtime tried in both runs: the same parity numbers
        common = set(x["runtimes"]) & set(y["runtimes"])
        assert common
        for rt in common:
            assert x["runtimes"][rt]["parity"] == y["runtimes"][rt]["parity"], (x["id"], rt)
    # the chosen model's files are identical (recipe.json records their sha256)
    sha = [json.loads((d / "model" / "recipe.json").read_text())["sha256"] for d in (a, b)]
    assert sha[0] == sha[1] and "model.safetensors" in sha[0]
