"""Typed results: results.json round trip from a real run, schema-1 files, unknown versions, and the
choice under a lower-is-better goal checked against hand-computed numbers."""
import json
import os
import subprocess
import sys

import pytest

import effdl
from effdl import ArtifactError, ConfigError, Goal, MeasureSettings, Provenance, Results
from effdl.pipeline.optimize import choose
from effdl.pipeline.recipe import Recipe
from effdl.pipeline.results import Candidate, Footprint
from effdl.pipeline.strategies import CandidateSpec
from effdl.report import write_report


@pytest.fixture(scope="module")
def run(digits_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    specs = [
        CandidateSpec("c00", "baseline", Recipe(())),
        CandidateSpec("c01", "prune 50%", Recipe((effdl.prune.Magnitude(sparsity=0.5, finetune_epochs=1),))),
        CandidateSpec("c02", "prune 80%", Recipe((effdl.prune.Magnitude(sparsity=0.8, finetune_epochs=1),))),
    ]
    res = effdl.optimize(digits_task, Goal(max_drop=0.05, target="size"), out_dir=out, candidates=specs,
                         measure=MeasureSettings(runtimes=("eager",)),
                         provenance=Provenance(command="pytest", model="zoo:mlp", data="digits"))
    return out, res


def test_results_json_round_trips_through_the_types(run):
    out, res = run
    loaded = Results.load(out / "results.json")
    assert loaded.model_dump() == res.model_dump()
    assert loaded == res
    assert [c.runtime for c in loaded.candidates] == ["eager"] * 3
    assert loaded.provenance == Provenance(command="pytest", model="zoo:mlp", data="digits")
    # saving the loaded object writes the same bytes' worth of content
    again = loaded.save(out / "copy.json")
    assert json.loads(again.read_text()) == json.loads((out / "results.json").read_text())


def _v1(chosen="c01"):
    """A schema-1 results.json as effdl 0.1.0 wrote it (shape of docs/results-schema.md, version 1)."""
    def cand(cid, label, recipe, acc, acc_val, p50, size, front):
        return {
            "id": cid, "label": label, "recipe": recipe, "status": "ok", "reason": None, "runtime": "eager",
            "runtimes": {"eager": {"status": "ok", "reason": None, "precision": "fp32",
                                   "latency_by_batch": {"1": {"p50_ms": p50, "p90_ms": p50 * 1.1, "threads": 2}},
                                   "parity": {"ok": True, "max_abs_err": 1e-6}, "info": {},
                                   "latency_ms_p50": p50, "latency_ms_p90": p50 * 1.1}},
            "quality": {"accuracy": acc, "top5": 1.0}, "quality_val": {"accuracy": acc_val, "top5": 1.0},
            "footprint": {"params": 6922, "nonzero_params": 6922, "size_bytes": size, "size_bytes_gzip": size - 500,
                          "size_bytes_dense_fp32": 27688, "macs": 6848, "macs_sparse": 6848, "flops": 13696,
                          "energy_uj": 0.03, "energy_method": "horowitz2014", "latency_ms_p50": p50,
                          "latency_ms_p90": p50 * 1.1, "throughput_per_s": 1000 / p50, "batch_size": 1, "threads": 2,
                          "latency_by_batch": {"1": {"p50_ms": p50, "p90_ms": p50 * 1.1}}, "peak_mem_bytes": 4096},
            "layers": {"1": {"params": 4160, "sparsity": 0.0}},
            "artifacts": {"model": f"candidates/{cid}/model.safetensors"}, "seconds": 1.5,
            "quality_drop": round(0.975 - acc, 6), "quality_drop_val": round(0.97 - acc_val, 6),
            "frontier": front, "on_frontier": front["latency"],
        }

    return {
        "schema_version": 1, "effdl_version": "0.1.0", "created": "2026-11-23T02:30:00Z",
        "command": "effdl optimize --model zoo:mlp --data digits --max-drop 0.01",
        "goal": {"metric": "accuracy", "max_drop": 0.01, "target": "latency", "batch_size": 1, "select_on": "val",
                 "latency_tie": 0.05},
        "model": "zoo:mlp", "data": "digits",
        "environment": {"cpu_model": "Xeon", "threads": 2},
        "baseline": "c00", "chosen": chosen, "chosen_reason": "lowest latency_ms_p50 among 2 candidates ...",
        "frontier": {"latency": ["c01", "c00"], "size": ["c01", "c00"]},
        "candidates": [
            cand("c00", "baseline", [], 0.975, 0.97, 0.05, 28_000, {"latency": True, "size": True}),
            cand("c01", "prune 50%", [{"technique": "prune.magnitude", "sparsity": 0.5}], 0.972, 0.965, 0.04,
                 17_000, {"latency": True, "size": True}),
        ],
        "export": {"dir": "model", "files": ["model.safetensors", "recipe.json"]},
    }


def test_schema_1_file_is_converted(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_v1()))
    res = Results.load(path)
    assert res.schema_version == 2
    # model, data and command moved into provenance; v1 drops were absolute and higher-is-better
    assert res.provenance == Provenance(command="effdl optimize --model zoo:mlp --data digits --max-drop 0.01",
                                        model="zoo:mlp", data="digits")
    assert res.goal.higher_is_better is True and res.goal.relative is False and res.goal.metric == "accuracy"
    c01 = res.chosen_candidate
    assert c01.id == "c01" and c01.footprint.size_bytes == 17_000 and c01.runtimes["eager"].parity["ok"] is True
    assert c01.quality_drop == pytest.approx(0.003)
    paths = write_report(res, tmp_path)
    assert "prune 50%" in paths["html"].read_text(encoding="utf-8")


def test_cli_report_reads_schema_1_and_refuses_unknown_versions(tmp_path):
    env = {**os.environ, "EFFDL_NO_REEXEC": "1"}
    (tmp_path / "results.json").write_text(json.dumps(_v1()))
    r = subprocess.run([sys.executable, "-m", "effdl.cli", "report", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").is_file() and (tmp_path / "pareto.csv").is_file()
    (tmp_path / "results.json").write_text(json.dumps({**_v1(), "schema_version": 7}))
    r = subprocess.run([sys.executable, "-m", "effdl.cli", "report", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "schema_version 7" in " ".join(r.stderr.split()) and "upgrade effdl" in " ".join(r.stderr.split())


@pytest.mark.parametrize("version, words", [
    (3, "schema_version 3, newer than"),
    ("2b", "schema_version '2b', which effdl does not know"),
])
def test_unknown_version_fails_clearly(tmp_path, version, words):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**_v1(), "schema_version": version}))
    with pytest.raises(ArtifactError, match=words):
        Results.load(path)


def test_malformed_files_fail_clearly(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ArtifactError, match="not found"):
        Results.load(path)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Results.load(path)
    bad = _v1()
    bad["candidates"][1]["footprint"]["size_bytes"] = "big"
    path.write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match=r"candidates\.1\.footprint\.size_bytes"):
        Results.load(path)
    path.write_text(json.dumps({**_v1(), "colour": "blue"}))
    with pytest.raises(ArtifactError, match="unknown keys \\['colour'\\]"):
        Results.load(path)
    for escape in ("../../etc/passwd", "/etc/passwd"):  # artifact paths never leave the output directory
        bad = _v1()
        bad["candidates"][1]["artifacts"] = {"model": escape}
        path.write_text(json.dumps(bad))
        with pytest.raises(ArtifactError, match="absolute or contains '..'"):
            Results.load(path)


def _ppl(cid, val, p50, size):
    """A measured candidate of a language model: validation perplexity, lower is better."""
    return Candidate(id=cid, label=cid, status="ok", runtime="eager", quality={"perplexity": val},
                     quality_val={"perplexity": val},
                     footprint=Footprint(latency_ms_p50=p50, latency_ms_p90=p50, size_bytes=size))


def test_lower_is_better_goal_chooses_within_a_relative_drop():
    base = _ppl("base", 20.0, 1.0, 100)
    x = _ppl("x", 20.8, 0.5, 50)    # (20.8 - 20) / 20 = 4.0% worse: within 5%
    y = _ppl("y", 21.5, 0.3, 40)    # 7.5% worse: fastest, but over the limit
    z = _ppl("z", 19.5, 0.9, 90)    # 2.5% better
    goal = Goal(metric="perplexity", higher_is_better=False, relative=True, max_drop=0.05, target="latency",
                latency_tie=0.0)
    chosen, why = choose([base, x, y, z], base, goal)
    assert chosen == "x"
    assert "within 5.00% of the baseline's validation perplexity (its drop: 4.00%)" in why
    assert "among 3 candidates" in why  # base, x, z
    # a 3% relative limit leaves base and z: z is faster
    assert choose([base, x, y, z], base, goal.model_copy(update={"max_drop": 0.03}))[0] == "z"
    # equal size and latency: the tie goes to the better quality, here the smaller perplexity
    w = _ppl("w", 20.5, 0.5, 50)
    assert choose([base, x, w], base, goal.model_copy(update={"target": "size"}))[0] == "w"
    # absolute: 0.5 perplexity allowed; x is 0.8 worse, so z (-0.5) is the fastest feasible
    absolute = goal.model_copy(update={"relative": False, "max_drop": 0.5})
    chosen, why = choose([base, x, y, z], base, absolute)
    assert chosen == "z" and "within 0.5 of the baseline's validation perplexity (its drop: -0.5)" in why
    # nothing within 1%: stated, nothing chosen (base is within, so remove it from the list)
    assert choose([x, y], base, goal.model_copy(update={"max_drop": 0.01}))[0] is None


def test_goal_is_checked_and_resolved_from_the_task(digits_task):
    with pytest.raises(ConfigError, match="target"):
        Goal(target="speed")
    with pytest.raises(ConfigError, match="max_drop"):
        Goal(max_drop=-0.1)
    resolved = Goal().resolve(digits_task)
    assert resolved.metric == digits_task.metric.name == "accuracy" and resolved.higher_is_better is True
    with pytest.raises(ConfigError, match="direction is unknown"):
        Goal(metric="top5").resolve(digits_task)
    assert Goal(metric="top5", higher_is_better=True).resolve(digits_task).metric == "top5"
    with pytest.raises(ConfigError, match="relative=True"):
        Goal(max_drop=1.0).resolve(digits_task)
    with pytest.raises(ConfigError, match="runtimes"):
        MeasureSettings(runtimes="eager")


def test_cli_prints_the_typed_results(run):
    from effdl.cli import _line, _summary, out as console

    out, res = run
    with console.capture() as cap:
        _summary(res, out)
    text = cap.get()
    assert "Candidates (test accuracy; latency at the goal's batch size)" in text and "drop (pt)" in text
    base, chosen = res.baseline_candidate, res.chosen_candidate
    assert (f"baseline c00 (baseline): accuracy {base.quality['accuracy']:.4f}, "
            f"{base.footprint.latency_ms_p50:.4f} ms p50 at batch 1 on eager") in text
    assert f"chosen {chosen.id} ({chosen.label}) on eager: accuracy" in text and "points on test" in text
    assert _line(base, "resumed", "accuracy").startswith(f"  c00 baseline: accuracy {base.quality['accuracy']:.4f}, ")


class _ErrorRate(effdl.ImageClassification):
    """Digits classification judged by its error rate: a real lower-is-better metric."""

    @property
    def metric(self):
        return effdl.MetricSpec("error", False)

    def evaluate(self, predictor, split="test"):
        q = super().evaluate(predictor, split)
        return {**q, "error": 1.0 - q["accuracy"]}


def test_lower_is_better_metric_end_to_end(digits, digits_task, tmp_path):
    from effdl.pipeline.pareto import pareto_front

    # the same trained model and data, judged by error rate
    task = _ErrorRate(digits_task.model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    specs = [CandidateSpec("c00", "baseline", Recipe(())),
             CandidateSpec("c01", "prune 50%", Recipe((effdl.prune.Magnitude(sparsity=0.5, finetune_epochs=1),))),
             CandidateSpec("c02", "prune 95%", Recipe((effdl.prune.Magnitude(sparsity=0.95),)))]
    res = effdl.optimize(task, Goal(max_drop=0.02, target="size"), out_dir=tmp_path, candidates=specs,
                         measure=MeasureSettings(runtimes=("eager",)))
    assert res.goal.metric == "error" and res.goal.higher_is_better is False
    base = res.baseline_candidate.quality_val["error"]
    for c in res.candidates:  # drop = candidate - baseline: a higher error is worse
        assert c.quality_drop_val == pytest.approx(c.quality_val["error"] - base)
    expect = pareto_front([(c.id, c.quality_val["error"], c.footprint.size_bytes) for c in res.candidates],
                          higher_is_better=False)
    assert res.frontier["size"] == expect
    feasible = [c for c in res.candidates if c.quality_val["error"] - base <= 0.02 + 1e-12]
    assert res.chosen == min(feasible, key=lambda c: (c.footprint.size_bytes, c.footprint.latency_ms_p50)).id
    assert Results.load(tmp_path / "results.json") == res


def test_both_sizes_are_recorded_honestly(digits_task, tmp_path):
    """The compact file (what a size goal minimises) and, per runtime, the artifact it loads: a
    pruned model's ONNX file is dense, so ORT loads more bytes than effdl stores."""
    specs = [CandidateSpec("c00", "baseline", Recipe(())),
             CandidateSpec("c01", "prune 80%", Recipe((effdl.prune.Magnitude(sparsity=0.8),)))]
    res = effdl.optimize(digits_task, Goal(max_drop=0.5, target="size"), out_dir=tmp_path, candidates=specs,
                         measure=MeasureSettings(runtimes=("eager", "ort"), repeats=3, all_runtimes=True))
    c = res.by_id["c01"]
    ort, eager = c.runtimes["ort"], c.runtimes["eager"]
    onnx = tmp_path / c.artifacts["onnx"]
    assert ort.artifact_bytes == onnx.stat().st_size
    assert eager.artifact_bytes == c.footprint.size_bytes == (tmp_path / c.artifacts["model"]).stat().st_size
    assert ort.artifact_bytes > 2 * c.footprint.size_bytes  # dense FP32 ONNX vs 80%-sparse compact file
    assert c.footprint.deployed_bytes == c.runtimes[c.runtime].artifact_bytes
    html = (tmp_path / "report.html").read_text()
    assert "size / gzip / deployed" in html and "what a size goal minimises" in html
