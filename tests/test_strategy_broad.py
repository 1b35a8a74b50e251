"""The 'broad' strategy: the other compression families measured end to end on real data."""
import pytest

import effdl
from effdl.pipeline.strategies import CandidateSpec, broad, candidates_for, shrink_and_improve
from effdl.zoo import build


def test_broad_adds_only_families_that_fit_the_model():
    mlp = build("mlp", input_shape=(64,), num_classes=10)
    lenet = build("lenet5", input_shape=(1, 28, 28), num_classes=10)
    base = len(shrink_and_improve(model=mlp))
    labels_mlp = [c.label for c in broad(model=mlp)[base:]]
    labels_cnn = [c.label for c in candidates_for("broad", model=lenet)[base:]]
    assert any("SVD" in x for x in labels_mlp) and not any("Tucker" in x for x in labels_mlp)
    assert any("Tucker" in x for x in labels_cnn) and any("Deep Compression" in x for x in labels_cnn)
    ids = [c.id for c in broad(model=lenet)]
    assert len(set(ids)) == len(ids)


def test_broad_families_measured_on_real_runtimes(digits_task, tmp_path):
    extra = broad(finetune_epochs=0.5, distill_epochs=0.5, model=digits_task.model)[len(shrink_and_improve()):]
    specs = [CandidateSpec("c00", "baseline", effdl.Recipe(()), ("eager",))] + [
        CandidateSpec(c.id, c.label, c.recipe, ("eager", "ort")) for c in extra]
    res = effdl.optimize(digits_task, effdl.Goal(max_drop=0.05, target="size"), out_dir=tmp_path, candidates=specs)
    by = {c.label: c for c in res.candidates}
    base = by["baseline"].footprint.size_bytes
    for label, c in by.items():
        assert c.status == "ok", (label, c.reason)
    # every family stores fewer bytes than the dense FP32 file
    dc = by["prune 90% + distill + share 4-bit (Deep Compression)"].footprint.size_bytes
    int4 = by["int4 weights (group 32)"].footprint.size_bytes
    svd = by["low-rank SVD 25% + distill"].footprint.size_bytes
    assert dc < base / 10 and int4 < base / 4 and svd < base, (dc, int4, svd, base)
    # the report says which layers the decomposition factorized
    html = (tmp_path / "report.html").read_text()
    assert "Low-rank factorization" in html and "lowrank.svd" in html
