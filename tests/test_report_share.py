"""report/share.py on a real tiny study: a pruned + clustered MLP on digits measured by `optimize`;
the section's numbers are checked against the file the study wrote and against the encoder run by
hand on the same (deterministic) clustering."""
import re

import pytest
import torch

import effdl
from effdl.compress.share import Cluster, clustered_layers, kmeans_1d
from effdl.compress.share.deep_compression import (
    BLOB_KEY,
    _bias,
    decode_blob,
    encode_layer,
    encode_model,
)
from effdl.deploy.storage import load_compact
from effdl.pipeline.recipe import Recipe
from effdl.pipeline.strategies import CandidateSpec
from effdl.report.fmt import count
from effdl.report.share import histogram_figure, share_section
from effdl.report.view import load_view

PRUNE = effdl.prune.Magnitude(sparsity=0.8)
SHARE = Cluster(bits=3, huffman=True, finetune_epochs=1, lr=1e-3)


@pytest.fixture(scope="module")
def study(digits_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("share")
    specs = [
        CandidateSpec("c00", "baseline", Recipe(()), ("eager",)),
        CandidateSpec("c01", "prune 80% + share 3-bit", Recipe((PRUNE, SHARE)), ("eager",)),
        # reuses c01's clustered model: the same record, shown once
        CandidateSpec("c02", "prune 80% + share 3-bit + distill",
                      Recipe((PRUNE, SHARE, effdl.learn.Distill(epochs=1))), ("eager",)),
    ]
    res = effdl.optimize(digits_task, effdl.Goal(max_drop=0.05, target="size"), out_dir=out, candidates=specs)
    return out, res


@pytest.fixture(scope="module")
def by_hand(digits_task):
    """The same prune + k-means without fine-tuning: fine-tuning moves the centroids only, so
    indices, masks and therefore every byte count are those of the study's model."""
    pruned = effdl.apply(digits_task, PRUNE)
    return pruned, effdl.apply(pruned, Cluster(bits=3, huffman=True))


def _record(res):
    c01 = res.by_id["c01"]
    assert c01.status == "ok", c01.reason
    return c01.records["share.cluster"]


def test_record_numbers_are_the_encoders(study, by_hand):
    _, res = study
    rec = _record(res)
    _, model = by_hand
    layers = clustered_layers(model)
    assert list(rec.layers) == [n for n, _, _ in layers] == ["1", "3", "5"]
    for name, m, p in layers:
        r = rec.layers[name]
        numel = m.weight.numel()
        nnz = int((m.weight != 0).sum())
        assert r.bits == 3 and r.shared_values == 2**3 == 8 and r.codebook_bytes == 32
        assert r.params == numel and r.nonzero == nnz and r.sparsity == pytest.approx(1 - nnz / numel)
        assert r.dense_bytes == 4 * (numel + m.bias.numel()) and r.bias_bytes == 4 * m.bias.numel()
        key, bias = f"{name}.weight", _bias(m)
        fixed = len(encode_layer(key, p, False, bias=bias))
        stored = len(encode_layer(key, p, True, bias=bias))  # what encode_model writes for huffman=True
        assert r.bytes_fixed == fixed and r.bytes_stored == stored == min(fixed, r.bytes_huffman)
        assert r.stored == ("huffman" if r.bytes_huffman < fixed else "fixed")
    # at 80% sparsity the two large layers gain from Huffman coding (their gap streams are skewed)
    assert rec.layers["1"].stored == "huffman" and rec.layers["1"].bytes_huffman < rec.layers["1"].bytes_fixed
    assert rec.container_bytes == len(encode_model(model)) == 6 + sum(r.bytes_stored for r in rec.layers.values())


def test_record_matches_the_file_the_study_wrote(study):
    out, res = study
    rec = _record(res)
    blob = load_compact(out / "candidates" / "c01" / "model.safetensors")[BLOB_KEY]
    assert blob.numel() == rec.container_bytes
    w = decode_blob(blob.numpy().tobytes())["1.weight"]
    # the file's weights are the fine-tuned centroids the histogram marks (an empty cluster is not used)
    used = set(w[w != 0].tolist())
    assert used <= set(torch.tensor(rec.histogram.centroids).float().tolist())
    assert len(used) >= 6 and int((w != 0).sum()) == rec.layers["1"].nonzero


def test_histogram_of_the_largest_layer_with_centroids(study, by_hand):
    _, res = study
    pruned, _ = by_hand
    h = _record(res).histogram
    values = pruned[1].weight.detach()
    values = values[values != 0]
    assert h.layer == "1"  # 64x64 > 32x64 > 10x32
    assert sum(h.counts) == values.numel() and len(h.counts) == 100 and len(h.edges) == 101
    assert h.edges[0] == pytest.approx(float(values.min())) and h.edges[-1] == pytest.approx(float(values.max()))
    assert h.centroids_kmeans == kmeans_1d(values, 8, "linear")[0].tolist()
    assert h.centroids != h.centroids_kmeans  # fine-tuning moved them

    fig = histogram_figure(load_view(res))
    bars, kmeans, tuned = fig.data
    assert list(bars.y) == h.counts and bars.x[0] == pytest.approx((h.edges[0] + h.edges[1]) / 2)
    assert kmeans.name == "centroids after k-means" and list(kmeans.x) == h.centroids_kmeans and list(kmeans.y) == [0] * 8
    assert tuned.name == "centroids after fine-tuning" and list(tuned.x) == h.centroids


def test_section_shows_each_layer_once(study):
    _, res = study
    rec = _record(res)
    html = share_section(load_view(res))
    assert html.count("<h3>") == 1 and "c01 prune 80% + share 3-bit:" in html  # c02 reuses c01's record
    assert "container " + f"{rec.container_bytes:,} B" in html or f"{rec.container_bytes / 1e3:.1f} kB" in html
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", html)
    assert len(rows) == 3
    for row, (name, r) in zip(rows, rec.layers.items()):
        cells = row.split("</td><td>")
        assert cells[:3] == [name, "8", "3"]
        assert cells[3] == f"{count(r.nonzero)} / {count(r.params)}"
        assert cells[4] == f"{100 * r.sparsity:.1f}%"
        assert cells[5:7] == ["32 B", f"{count(r.bytes_fixed)} B"]
        assert cells[7] == f"{count(r.bytes_huffman)} B ({r.gap_bits}-bit gaps)"
        assert cells[8] == f"<b>{count(r.bytes_stored)} B</b> ({r.stored})"
        assert cells[10] == f"{r.dense_bytes / r.bytes_stored:.2f}x"
    assert 'id="plot-share-hist"' in html


def test_no_sharing_candidate_renders_nothing(study):
    _, res = study
    plain = res.model_copy(update={"candidates": res.candidates[:1], "chosen": "c00"})
    assert share_section(load_view(plain)) == "" and histogram_figure(load_view(plain)) is None
    # a failed candidate's record is never shown
    failed = res.model_copy(update={"candidates": res.candidates[:1] + [
        c.model_copy(update={"status": "failed"}) for c in res.candidates[1:]]})
    assert share_section(load_view(failed)) == ""


@pytest.mark.parametrize("steps", [(("5",), ("1", "3")), (("1",), ("3", "5"))])
def test_per_layer_steps_merge_into_one_record(by_hand, steps):
    """share.cluster once per layer group (per-layer bits): one record of every clustered layer, the
    histogram of the largest layer whichever step clustered it."""
    from effdl.core.records import records

    pruned, _ = by_hand
    first = effdl.apply(pruned, Cluster(bits=2, layers=steps[0]))
    both = effdl.apply(first, Cluster(bits=3, layers=steps[1]))
    rec = records(both)["share.cluster"]
    bits = {n: 2 if n in steps[0] else 3 for n in ("1", "3", "5")}
    assert {n: r.bits for n, r in rec.layers.items()} == bits
    assert {n: r.shared_values for n, r in rec.layers.items()} == {n: 2**b for n, b in bits.items()}
    assert rec.container_bytes == len(encode_model(both))
    assert rec.histogram.layer == "1" and len(rec.histogram.centroids) == 2 ** bits["1"]


def test_histogram_draws_offline_in_headless_chromium(study, tmp_path):
    from plotly.offline import get_plotlyjs
    from test_report import _browser, _chromium

    exe = _chromium()
    _, res = study
    page = tmp_path / "share.html"  # the section alone, with plotly.js inline as the report embeds it
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><script>{get_plotlyjs()}</script></head>'
                    f"<body>{share_section(load_view(res))}</body></html>")
    dom = _browser(exe, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = re.sub(r"<script\b.*?</script>", "", dom.stdout, flags=re.S)
    assert html.count("js-plotly-plot") == 1
    assert html.count('<path class="point"') == 8 + 8  # centroids after k-means and after fine-tuning
    assert html.count('<g class="point">') == 100  # one bar per histogram bin
