"""Deep Compression storage: exact round trips of the one-file format, its size by hand, measure's
bytes on disk, the recipe, and corrupt or wrong inputs."""
import copy
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.share import (
    Cluster,
    clustered_layers,
    load_deep_compressed,
    save_deep_compressed,
)
from effdl.compress.share.deep_compression import (
    BLOB_KEY,
    decode_blob,
    encode_model,
    storage_tensors,
)
from effdl.core.errors import ArtifactError, ConfigError
from effdl.deploy.storage import load_compact, save_compact

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages(digits_task):
    pruned = effdl.apply(digits_task, effdl.prune.Magnitude(sparsity=0.85))
    clustered = effdl.apply(pruned, Cluster(bits=4, huffman=True, finetune_epochs=1, lr=1e-3), task=digits_task)
    return pruned, clustered


@pytest.mark.parametrize("huffman", [False, True])
def test_round_trip_is_bit_identical(stages, digits_task, tmp_path, huffman):
    _, clustered = stages
    path = tmp_path / "dc.safetensors"
    size = save_deep_compressed(clustered, path, huffman=huffman)
    assert size == path.stat().st_size
    assert set(load_compact(path)) == {BLOB_KEY}  # weights and biases of every layer in the container
    fresh = load_deep_compressed(path, copy.deepcopy(digits_task.model))
    state = fresh.state_dict()
    for name, m, _ in clustered_layers(clustered):
        assert torch.equal(state[f"{name}.weight"].view(torch.int32), m.weight.detach().view(torch.int32)), name
        assert torch.equal(state[f"{name}.bias"], m.bias.detach())
    x = digits_task.example_input(64)
    assert torch.equal(fresh(x), clustered(x))


def test_huffman_is_smaller_and_measure_reports_the_file(stages, digits_task, tmp_path):
    from effdl.metrics.measure import static_footprint

    pruned, clustered = stages
    sizes = {
        "pruned": save_compact(pruned.state_dict(), tmp_path / "p.safetensors"),
        "fixed": save_deep_compressed(clustered, tmp_path / "f.safetensors", huffman=False),
        "huffman": save_deep_compressed(clustered, tmp_path / "h.safetensors"),  # the model's own setting
    }
    assert sizes["huffman"] < sizes["fixed"] < sizes["pruned"], sizes
    fp = static_footprint(clustered, digits_task, tmp_path / "m.safetensors")
    assert fp["size_bytes"] == sizes["huffman"]
    assert fp["params"] >= sum(m.weight.numel() for _, m, _ in clustered_layers(clustered))
    # parameters: the dense copies, the biases and the codebook entries
    assert fp["nonzero_params"] == sum(int((m.weight != 0).sum()) + int((m.bias != 0).sum())
                                       + int((p.codebook != 0).sum()) for _, m, p in clustered_layers(clustered))


def test_fixed_mode_size_by_hand():
    w = torch.zeros(4, 16)
    w[:, ::2] = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)  # 32 of 64 weights non-zero
    lin = nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    out = effdl.apply(nn.Sequential(lin), Cluster(bits=2))
    blob = encode_model(out, huffman=False)
    # magic+version+count 6; name 2+8; ndim+shape 1+8; bits/mode/k/has_bias 4; codebook 4*4; nnz 4;
    # mask 64/8; indices 32*2/8
    assert len(blob) == 6 + 10 + 9 + 4 + 16 + 4 + 8 + 8
    assert torch.equal(decode_blob(blob)["0.weight"], out.float_model[0].weight.detach())
    assert set(storage_tensors(out)) == {BLOB_KEY}
    # so small a layer keeps the fixed layout even with huffman on: the code tables cost more
    assert encode_model(out, huffman=True) == blob


def test_index_bits_fixed_or_smallest(stages):
    _, clustered = stages
    name, _, p = clustered_layers(clustered)[0]
    sizes = {}
    for k in (0, 3, 5, 8):
        p.index_bits = k
        blob = encode_model(clustered, huffman=True)
        # the first layer's k byte: after magic(3)+version/count(3)+name+ndim+shape, bits, mode
        key = f"{name}.weight".encode()
        at = 6 + 2 + len(key) + 1 + 4 * p.mask.dim() + 2
        stored_k = blob[at]
        assert stored_k == k or k == 0
        sizes[k] = len(blob)
        assert torch.equal(decode_blob(blob)[f"{name}.weight"], clustered_layers(clustered)[0][1].weight.detach())
    p.index_bits = 0
    assert sizes[0] <= min(sizes[3], sizes[5], sizes[8])


def test_refusals(stages, digits_task, tmp_path):
    pruned, clustered = stages
    with pytest.raises(ConfigError, match="apply share.cluster"):
        save_deep_compressed(pruned, tmp_path / "x.safetensors")
    path = tmp_path / "dc.safetensors"
    save_deep_compressed(clustered, path)
    with pytest.raises(ConfigError, match="freshly built"):
        load_deep_compressed(path, clustered)
    save_compact(pruned.state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(ArtifactError, match="not a Deep Compression file"):
        load_deep_compressed(tmp_path / "plain.safetensors", copy.deepcopy(digits_task.model))
    tensors = load_compact(path)
    blob = tensors[BLOB_KEY].numpy().tobytes()
    for bad in (blob[:-3], b"XYZ" + blob[3:], blob + b"\x00", blob[:3] + struct.pack("<B", 9) + blob[4:]):
        with pytest.raises(ArtifactError, match="corrupt"):
            decode_blob(bad)


def test_recipe_parses_and_names_the_pipeline():
    from effdl.pipeline.recipe import Recipe

    r = Recipe.load(ROOT / "recipes" / "deep-compression.yaml")
    names = [s.technique for s in r.steps]
    share = [i for i, n in enumerate(names) if n == "share.cluster"]
    assert names[0] == "prune.magnitude" and all(r.steps[i].huffman for i in share)
    assert names[share[-1] + 1:] == ["learn.distill"]  # the shared centroids are trained after clustering
    clustered = [set(r.steps[i].layers) for i in share]
    assert set.union(*clustered) == {"0", "3", "7", "9", "11"} and sum(map(len, clustered)) == 5  # disjoint
    share = share[0]
    pruned = {s.exclude for s in r.steps[:share] if s.technique == "prune.magnitude"}
    assert len(pruned) == 5  # one step per LeNet-5 layer (per-layer rates, as Han et al.)
