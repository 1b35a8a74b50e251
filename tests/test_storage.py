"""Compact storage: exact round trips, the size it promises, and refusal of damaged files."""
import json

import pytest
import torch
from safetensors.torch import save, save_file

from effdl.core.compressed import CompressedModel
from effdl.core.errors import ArtifactError, ConfigError, ModelError
from effdl.deploy.storage import (
    LAYOUT_KEY, SPARSE_HEADER_OVERHEAD, load_compact, model_tensors, read_metadata, save_compact,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
          torch.int32, torch.int64, torch.bool]


def _sample(dtype, n, zero_fraction, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        t = torch.ones(n, dtype=torch.bool)
    elif dtype.is_floating_point:
        t = (torch.rand(n, generator=g) + 0.5).to(dtype) * torch.where(torch.rand(n, generator=g) < 0.5, -1, 1).to(dtype)
    else:
        t = torch.randint(1, 100, (n,), generator=g).to(dtype)
    t[torch.randperm(n, generator=g)[: int(n * zero_fraction)]] = 0
    return t


def _bits(t):
    """Byte view of a tensor, for bit-for-bit comparison (NaN and -0.0 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_is_bit_exact_for_every_dtype(tmp_path, dtype):
    tensors = {
        "features.0.weight": _sample(dtype, 600, 0.9, 0).reshape(20, 30),  # goes sparse
        "features.0.bias": _sample(dtype, 30, 0.0, 1),  # stays dense
        "classifier.1.running_var": _sample(dtype, 12, 0.5, 2).reshape(3, 4),
        "scalar.v": _sample(dtype, 1, 0.0, 3).reshape(()),
        "empty": torch.zeros(0, 5, dtype=dtype),
    }
    path = tmp_path / "m.safetensors"
    written = save_compact(tensors, path)
    assert written == path.stat().st_size
    layout = json.loads(read_raw_metadata(path)[LAYOUT_KEY])["tensors"]
    assert layout["features.0.weight"]["layout"] == "bitmask"
    assert layout["features.0.bias"]["layout"] == "dense"
    loaded = load_compact(path)
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        _assert_identical(loaded[name], t)


def read_raw_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_negative_zero_and_nan_payloads_survive_sparse_layout(tmp_path):
    t = torch.zeros(1000)
    t[0], t[1], t[2] = -0.0, float("nan"), float("-inf")
    t.view(torch.int32)[3] = 0x7FC00123  # a NaN with a payload
    save_compact({"w": t}, tmp_path / "f.safetensors")
    assert json.loads(read_raw_metadata(tmp_path / "f.safetensors")[LAYOUT_KEY])["tensors"]["w"]["layout"] == "bitmask"
    _assert_identical(load_compact(tmp_path / "f.safetensors")["w"], t)


def test_sparse_file_size_matches_hand_count(tmp_path):
    # 10,000 float32 values, 9,000 zeros: dense data 40,000 B; bitmask 10,000/8 = 1,250 B + 1,000*4 B.
    t = _sample(torch.float32, 10_000, 0.9, 7)
    assert int(torch.count_nonzero(t)) == 1000
    sparse = save_compact({"layer.weight": t}, tmp_path / "s.safetensors")
    dense = len(save({"layer.weight": t}))
    header_slack = 512  # safetensors JSON header + our layout record, both small
    assert 1250 + 4000 < sparse <= 1250 + 4000 + header_slack
    assert 40_000 < dense <= 40_000 + header_slack
    assert (dense - sparse) == pytest.approx(40_000 - 5250, abs=header_slack)


def test_layout_choice_is_the_smaller_one(tmp_path):
    # int8 at 50% zeros: bitmask 125 + 500 + overhead < 1000 dense; at 10% zeros it is not.
    half = _sample(torch.int8, 1000, 0.5, 0)
    few = _sample(torch.int8, 1000, 0.1, 0)
    save_compact({"half": half, "few": few}, tmp_path / "x.safetensors")
    layout = json.loads(read_raw_metadata(tmp_path / "x.safetensors")[LAYOUT_KEY])["tensors"]
    assert 125 + 500 + SPARSE_HEADER_OVERHEAD < 1000 and layout["half"]["layout"] == "bitmask"
    assert 125 + 900 + SPARSE_HEADER_OVERHEAD > 1000 and layout["few"]["layout"] == "dense"


def test_non_contiguous_and_grad_tensors(tmp_path):
    w = torch.randn(8, 6, requires_grad=True)
    t = w.t()  # non-contiguous view
    save_compact({"t": t, "w": w}, tmp_path / "n.safetensors")
    out = load_compact(tmp_path / "n.safetensors")
    _assert_identical(out["t"], t.detach().contiguous())
    assert not out["w"].requires_grad


def test_tied_tensors_stored_once_and_loaded_shared(tmp_path):
    emb = torch.nn.Embedding(100, 32)
    head = torch.nn.Linear(32, 100, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head)
    tensors = model_tensors(model)
    assert set(tensors) == {"0.weight", "1.weight"}
    tied = save_compact(tensors, tmp_path / "tied.safetensors")
    single = save_compact({"0.weight": tensors["0.weight"]}, tmp_path / "one.safetensors")
    assert tied - single < 100  # only the alias record, not another 12,800 bytes
    out = load_compact(tmp_path / "tied.safetensors")
    assert out["0.weight"] is out["1.weight"]
    fresh = torch.nn.Sequential(torch.nn.Embedding(100, 32), torch.nn.Linear(32, 100, bias=False))
    fresh.load_state_dict(out, strict=True)
    assert torch.equal(fresh[1].weight, emb.weight)


def test_loaded_tensors_outlive_the_file(tmp_path):
    path = tmp_path / "gone.safetensors"
    t = torch.arange(100, dtype=torch.float32)
    save_compact({"t": t}, path)
    out = load_compact(path)
    path.unlink()
    assert torch.equal(out["t"], t)


def test_metadata_round_trip_and_reserved_key(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"a": torch.ones(3)}, path, metadata={"technique": "prune.magnitude", "sparsity": "0.9"})
    assert read_metadata(path) == {"technique": "prune.magnitude", "sparsity": "0.9"}
    with pytest.raises(ConfigError, match="reserved"):
        save_compact({"a": torch.ones(3)}, path, metadata={LAYOUT_KEY: "x"})
    with pytest.raises(ConfigError, match="str to str"):
        save_compact({"a": torch.ones(3)}, path, metadata={"n": 3})


def test_bad_inputs_are_refused_and_leave_old_file(tmp_path):
    path = tmp_path / "keep.safetensors"
    save_compact({"a": torch.ones(3)}, path)
    before = path.read_bytes()
    t = _sample(torch.float32, 1000, 0.9, 0)
    with pytest.raises(ConfigError, match="reserved"):
        save_compact({"w": t, "w::mask": torch.ones(2)}, path)
    with pytest.raises(ConfigError, match="str -> Tensor"):
        save_compact({"w": [1, 2]}, path)
    with pytest.raises(ConfigError, match="dense"):
        save_compact({"w": torch.eye(3).to_sparse()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]  # no temporary left over


def test_truncated_file_raises_artifact_error(tmp_path):
    path = tmp_path / "full.safetensors"
    n = save_compact({"w": _sample(torch.float32, 1000, 0.9, 0), "b": torch.randn(10)}, path)
    data = path.read_bytes()
    for cut in (n - 1, n // 2, 10, 0):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="truncated"):
            load_compact(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_compact(tmp_path / "missing.safetensors")


def _rewrite(tmp_path, parts, layout, name="bad.safetensors"):
    path = tmp_path / name
    save_file(parts, str(path), metadata={LAYOUT_KEY: json.dumps(layout)})
    return path


def test_inconsistent_metadata_raises_artifact_error(tmp_path):
    t = _sample(torch.float32, 64, 0.9, 0)
    good = tmp_path / "good.safetensors"
    save_compact({"w": t}, good)
    layout = json.loads(read_raw_metadata(good)[LAYOUT_KEY])
    parts = dict(load_parts(good))

    def variant(edit):
        doc = json.loads(json.dumps(layout))
        edit(doc)
        return doc

    cases = {
        "wrong dtype": (parts, variant(lambda d: d["tensors"]["w"].update(dtype="float16"))),
        "wrong shape": (parts, variant(lambda d: d["tensors"]["w"].update(shape=[65]))),
        "unknown layout": (parts, variant(lambda d: d["tensors"]["w"].update(layout="zip"))),
        "missing part": ({"w::mask": parts["w::mask"]}, layout),
        "extra entry": ({**parts, "stray": torch.ones(1)}, layout),
        "bad alias": (parts, variant(lambda d: d["aliases"].update(v="nope"))),
        "values count": ({**parts, "w::values": parts["w::values"][:-1]}, layout),
        "version": (parts, variant(lambda d: d.update(version=99))),
    }
    for i, (label, (p, doc)) in enumerate(cases.items()):
        path = _rewrite(tmp_path, p, doc, f"bad{i}.safetensors")
        with pytest.raises(ArtifactError):
            load_compact(path)
    not_json = tmp_path / "notjson.safetensors"
    save_file(parts, str(not_json), metadata={LAYOUT_KEY: "{not json"})
    with pytest.raises(ArtifactError, match="layout record"):
        load_compact(not_json)


def load_parts(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_plain_safetensors_file_loads_as_dense(tmp_path):
    path = tmp_path / "plain.safetensors"
    tensors = {"a.b": torch.randn(3, 4), "c": torch.arange(5)}
    save_file(tensors, str(path))
    out = load_compact(path)
    for k, v in tensors.items():
        _assert_identical(out[k], v)


class _Quantized(CompressedModel):
    """A model that describes its own storage (as quantized models do): int8 weights + scales."""

    runtime_kind = "float"

    def __init__(self):
        super().__init__()
        self.float_weight = torch.nn.Parameter(torch.randn(4, 4))

    def float_reference(self):
        return self

    def storage_tensors(self):
        scale = self.float_weight.detach().abs().amax() / 127
        q = torch.round(self.float_weight.detach() / scale).to(torch.int8)
        return {"fc.weight_int8": q, "fc.scale": scale.reshape(1)}


def test_model_tensors_prefers_storage_tensors():
    m = _Quantized()
    out = model_tensors(m)
    assert set(out) == {"fc.weight_int8", "fc.scale"} and out["fc.weight_int8"].dtype == torch.int8
    plain = model_tensors(torch.nn.BatchNorm1d(3))
    assert set(plain) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert all(not v.requires_grad and v.is_contiguous() for v in plain.values())

    class Broken(_Quantized):
        def storage_tensors(self):
            return [torch.ones(1)]

    with pytest.raises(ModelError, match="storage_tensors"):
        model_tensors(Broken())

    class NotDeclared(torch.nn.Module):  # a method of that name is not the contract: its state dict is stored
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def storage_tensors(self):
            return {"other": torch.zeros(1)}

    assert set(model_tensors(NotDeclared())) == {"w"}


def test_two_views_of_one_storage_are_both_stored(tmp_path):
    x = torch.randn(4, 6)
    tensors = {"x": x, "x_flat": x.view(24), "row": x[1]}
    save_compact(tensors, tmp_path / "v.safetensors")
    out = load_compact(tmp_path / "v.safetensors")
    for k, v in tensors.items():
        _assert_identical(out[k], v)


def _nm_tensor(rows: int, cols: int, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, cols, generator=g)
    keep = torch.rand(rows, cols // m, m, generator=g).argsort(-1)[..., :n]
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, keep, True)
    return torch.where(mask.reshape(rows, cols), t, torch.zeros(()))


def test_nm_layout_stores_values_and_position_metadata(tmp_path):
    from effdl.deploy.storage import NM_GROUPS  # noqa: F401  (the M values tried)

    one4 = _nm_tensor(64, 128, 1, 4, 0)   # 1:4: 0.5 bit of metadata per element beats a 1-bit mask
    two4 = _nm_tensor(64, 128, 2, 4, 1)   # 2:4: ties with the bitmask; the N:M layout is kept
    four8 = _nm_tensor(64, 128, 4, 8, 2)  # 4:8: 1.5 bits per element: the bitmask wins
    two4[0, 0], two4[0, 1] = -0.0, 0.0    # a -0.0 bit pattern is a value like any other
    tensors = {"a": one4, "b": two4, "c": four8}
    size = save_compact(tensors, tmp_path / "nm.safetensors")
    layout = json.loads(read_raw_metadata(tmp_path / "nm.safetensors")[LAYOUT_KEY])["tensors"]
    assert (layout["a"]["layout"], layout["a"]["n"], layout["a"]["m"]) == ("nm", 1, 4)
    assert (layout["b"]["layout"], layout["b"]["n"], layout["b"]["m"]) == ("nm", 2, 4)
    assert layout["c"]["layout"] == "bitmask"
    back = load_compact(tmp_path / "nm.safetensors")
    for k, t in tensors.items():
        assert torch.equal(back[k].view(torch.int32), t.view(torch.int32)), k
    # a: 2,048 groups x 1 value x 4 B + 2,048 x 2 bits = 8,192 + 512; b: 4,096 x 4 B + 4,096 x 2 bits
    # = 16,384 + 1,024; c: 1,024 B mask + 4,096 x 4 B
    data = (8192 + 512) + (16384 + 1024) + (1024 + 16384)
    assert data < size <= data + 1024


def test_nm_layout_corrupt_index_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "nm.safetensors"
    save_compact({"w": _nm_tensor(8, 16, 1, 4, 0)}, path)
    meta = read_raw_metadata(path)
    parts = load_file(str(path))
    parts["w::index"] = parts["w::index"][:-1].clone()  # truncated metadata
    save_file(parts, str(path), metadata=meta)
    with pytest.raises(ArtifactError, match="index"):
        load_compact(path)


def test_two_four_pruned_model_is_stored_in_nm_layout(tmp_path):
    import effdl
    from effdl.compress.prune import WeightPruneConfig
    from effdl.zoo import build

    torch.manual_seed(0)
    model = build("mlp", input_shape=(64,), num_classes=10, hidden=(128,))
    pruned = effdl.apply(model, WeightPruneConfig(sparsity=0.5, granularity="n:m", n=2, m=4))
    save_compact(pruned.state_dict(), tmp_path / "m.safetensors")
    layout = json.loads(read_raw_metadata(tmp_path / "m.safetensors")[LAYOUT_KEY])["tensors"]
    assert {k: (v["layout"], v.get("n"), v.get("m")) for k, v in layout.items() if k.endswith("weight")} == {
        "1.weight": ("nm", 2, 4), "3.weight": ("nm", 2, 4)}
    back = load_compact(tmp_path / "m.safetensors")
    for k, t in pruned.state_dict().items():
        assert torch.equal(back[k], t), k
