"""core.records: typed records, their registry, JSON round trips through results.json, and the
report's drawer registry."""
import json
import logging

import pytest
import torch
from torch import nn

import effdl
from effdl.compress import lowrank
from effdl.compress.lowrank.common import LowRankRecord
from effdl.compress.lowrank.conv import CPRecord, SpatialSVDRecord, TuckerRecord
from effdl.compress.lowrank.svd import SVDRecord
from effdl.compress.lowrank.tt import TTRecord
from effdl.compress.prune import HeadPruneConfig, LotteryConfig, WeightPruneConfig
from effdl.compress.prune.heads import HeadsRecord
from effdl.compress.prune.lottery import LotteryRecord
from effdl.compress.prune.trajectory import TrajectoryRecord
from effdl.compress.prune.weights import SensitivityRecord
from effdl.compress.quantize import MixedConfig, QATConfig
from effdl.compress.quantize.mixed import MixedLayer, MixedSensitivityRecord
from effdl.compress.quantize.ptq import Int8LayersRecord
from effdl.compress.quantize.qat import ActRangesRecord, Int8AgreementRecord, QATRecord, QuantErrorHistRecord
from effdl.compress.share import Cluster
from effdl.compress.share.cluster import ClusterRecord
from effdl.core.errors import ArtifactError, ConfigError
from effdl.core.records import Record, UnknownRecord, attach, parse_records, record_classes, records
from effdl.pipeline.results import Candidate, Goal, Results
from effdl.report.html import render_html
from effdl.report.registry import draws
from effdl.report.sparsity import SPARSITY
from effdl.zoo import build

EXPECTED = {
    "sensitivity": SensitivityRecord, "trajectory": TrajectoryRecord, "lottery": LotteryRecord,
    "heads": HeadsRecord, "int8_layers": Int8LayersRecord, "quant_error_hist": QuantErrorHistRecord,
    "qat_mse": QATRecord, "act_ranges": ActRangesRecord, "qat_int8_agreement": Int8AgreementRecord,
    "quant_sensitivity": MixedSensitivityRecord, "share.cluster": ClusterRecord, "lowrank.svd": SVDRecord,
    "lowrank.tucker": TuckerRecord, "lowrank.cp": CPRecord, "lowrank.spatial_svd": SpatialSVDRecord,
    "lowrank.tt": TTRecord,
}


def _results(*cands: Candidate) -> Results:
    base = Candidate(id="c00", label="baseline", status="ok")
    return Results(goal=Goal(metric="accuracy", higher_is_better=True), baseline="c00", candidates=[base, *cands])


def test_every_kind_is_registered_under_its_key():
    classes = record_classes()
    for key, cls in EXPECTED.items():
        assert classes[key] is cls and cls.key == key


def test_round_trip_keeps_the_json_shape_of_plain_dict_records(tmp_path):
    sens = SensitivityRecord(curves={"fc1": [(0.3, 0.0), (0.5, 0.002)]})
    mixed = MixedSensitivityRecord(measure="val_drop", metric="accuracy", budget=12.0, cost=12, unit="bits",
                                   layers={"fc1": MixedLayer(params=3, bits=4, fixed=False, sensitivity={"4": 0.01})})
    agree = Int8AgreementRecord(agreement=None)
    res = _results(Candidate(id="c01", label="x", status="ok",
                             records={"sensitivity": sens, "quant_sensitivity": mixed, "qat_int8_agreement": agree}))
    path = res.save(tmp_path / "results.json")
    raw = json.loads(path.read_text())["candidates"][1]["records"]
    # a root record is its bare value; an optional field left at None is absent, as the dicts had it
    assert raw["sensitivity"] == {"fc1": [[0.3, 0.0], [0.5, 0.002]]}
    assert raw["quant_sensitivity"]["layers"]["fc1"] == {"params": 3, "bits": 4, "fixed": False,
                                                         "sensitivity": {"4": 0.01}}
    assert raw["qat_int8_agreement"] is None
    back = Results.load(path).by_id["c01"].records
    assert back == {"sensitivity": sens, "quant_sensitivity": mixed, "qat_int8_agreement": agree}
    assert type(back["sensitivity"]) is SensitivityRecord


def test_a_duplicate_key_is_refused():
    with pytest.raises(ConfigError, match="record key 'sensitivity' .* is already taken by .*SensitivityRecord"):
        class Again(Record):
            key = "sensitivity"
            curves: dict[str, list[float]]
    assert record_classes()["sensitivity"] is SensitivityRecord


def test_attach_takes_only_typed_records():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="attach takes a typed record .* got dict"):
        attach(model, {"fc1": [[0.5, 0.1]]})
    with pytest.raises(TypeError):
        attach(model, "sensitivity", {"fc1": [[0.5, 0.1]]})  # the old (key, value) form
    with pytest.raises(ConfigError, match="got UnknownRecord"):
        attach(model, UnknownRecord(data=1))
    with pytest.raises(ConfigError, match="got LowRankRecord"):  # the abstract base has no key of its own
        attach(model, LowRankRecord(layers={}, skipped={}, params_before=0, params_after=0))
    rec = SensitivityRecord(curves={"w": [(0.5, 0.1)]})
    attach(model, rec)
    assert records(model) == {"sensitivity": rec}


def test_records_are_frozen_and_refuse_unknown_fields():
    rec = TrajectoryRecord(kind="weights", points=[(0.0, 0.0, 0.9, "start")])
    with pytest.raises(Exception, match="frozen"):
        rec.kind = "channels"
    with pytest.raises(Exception, match="extra"):
        TrajectoryRecord(kind="weights", points=[], bonus=1)


def test_an_unknown_key_loads_as_it_was_and_is_not_drawn(tmp_path, caplog):
    data = _results(Candidate(id="c01", label="x", status="ok")).to_json_dict()
    data["candidates"][1]["records"] = {"from.the.future": {"layers": {"fc1": [1, 2]}},
                                        "sensitivity": {"fc1": [[0.5, 0.1]]}}
    src = tmp_path / "results.json"
    src.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="effdl.core.records"):
        res = Results.load(src)
    assert any("'from.the.future' is of a kind this effdl does not know" in r.message for r in caplog.records)
    recs = res.by_id["c01"].records
    assert recs["from.the.future"] == UnknownRecord(data={"layers": {"fc1": [1, 2]}})
    assert isinstance(recs["sensitivity"], SensitivityRecord)
    # saved back unchanged, and the page still renders (the known record is drawn, the unknown is not)
    again = json.loads(res.save(tmp_path / "again.json").read_text())
    assert again["candidates"][1]["records"] == data["candidates"][1]["records"]
    html = render_html(res)
    assert "plot-sensitivity" in html and "from.the.future" not in html


def test_a_malformed_known_record_is_an_artifact_error():
    data = _results(Candidate(id="c01", label="x", status="ok")).to_json_dict()
    data["candidates"][1]["records"] = {"trajectory": {"kind": "weights"}}  # no points
    with pytest.raises(ArtifactError, match="malformed: .*points"):
        Results.from_dict(data)
    with pytest.raises(Exception, match="points"):
        parse_records({"trajectory": {"kind": "weights"}})


def test_a_record_class_has_one_drawer():
    with pytest.raises(ConfigError, match="SensitivityRecord is already drawn by"):
        @draws(SensitivityRecord, SPARSITY)
        def other(view):
            return ""
    with pytest.raises(ConfigError, match="draws takes a Record subclass"):
        draws(dict, SPARSITY)


@pytest.fixture(scope="module")
def real_records(digits_task, digits):
    """Every record kind, each left by a real (small) run of its technique."""
    task = digits_task
    runs = {
        # sensitivity curves + the iterative trajectory in one run
        "prune": effdl.apply(task, WeightPruneConfig(sparsity=0.5, distribution="sensitivity",
                                                     sensitivity_ratios=(0.5, 0.9), schedule="iterative", rounds=2,
                                                     finetune_epochs=0.2)),
        "lottery": effdl.apply(task, LotteryConfig(rate=0.2, rounds=1, epochs=0.3, lr=3e-3)),
        # weight error histograms, QAT mse, activation ranges, int8 agreement and ptq's int8_layers
        "qat": effdl.apply(task, QATConfig(bits=8, activations=True, epochs=0.3)),
        "mixed": effdl.apply(task, MixedConfig(budget_bits_per_weight=4.0, keep_first_last=False)),
        "share": effdl.apply(task, Cluster(bits=2)),
        "svd": effdl.apply(task.model, lowrank.SVD(rank=3, keep_last=False)),
        "tt": effdl.apply(task.model, lowrank.TT(rank=2, keep_last=False)),
    }
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(6, 8, (3, 5))).eval()
    runs["tucker"] = effdl.apply(conv, lowrank.Tucker(rank=2, keep_last=False))
    runs["cp"] = effdl.apply(conv, lowrank.CP(rank=2, keep_last=False))
    runs["spatial"] = effdl.apply(conv, lowrank.SpatialSVD(rank=2, keep_last=False))
    torch.manual_seed(0)
    encoder = build("encoder", input_shape=digits.input_shape, num_classes=digits.num_classes, patch=2, dim=16, heads=4)
    runs["heads"] = effdl.apply(encoder, HeadPruneConfig(ratio=0.5, saliency="l1"))
    return {name: records(model) for name, model in runs.items()}


def test_real_records_load_back_into_their_classes(real_records, tmp_path):
    cands = [Candidate(id=f"c{i:02d}", label=name, status="ok", recipe=[{"technique": name}], records=recs)
             for i, (name, recs) in enumerate(real_records.items(), start=1)]
    path = _results(*cands).save(tmp_path / "results.json")
    loaded = Results.load(path)
    seen = {}
    for cand in cands:
        back = loaded.by_id[cand.id].records
        assert list(back) == list(cand.records)
        for key, rec in back.items():
            assert type(rec) is EXPECTED[key], key
            assert rec.model_dump(mode="json") == cand.records[key].model_dump(mode="json")
            seen[key] = rec
    assert set(seen) == set(EXPECTED)  # one of each kind
    assert seen["qat_int8_agreement"].agreement > 0.9 and seen["lottery"].rounds[1].round == 1
    assert all(len(h.kept) == 2 for h in seen["heads"].layers.values())
    html = render_html(loaded)
    for part in ("plot-trajectory", "plot-sensitivity", "plot-quant-error", "plot-act-ranges",
                 "plot-quant-sensitivity", "plot-qat-mse", "plot-share-hist", "lowrank.tucker", "lowrank.tt"):
        assert part in html, part
