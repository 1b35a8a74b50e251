"""Bundled data sets: split sizes, stratification, determinism, normalization, caching, factories."""
from __future__ import annotations

import dataclasses
import re
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from effdl.core.errors import DataError
from effdl.data import DATASETS, Splits, cache_dir, load_data, mnist1d_cache_files
from effdl.data.splits import _allocate, stratified_indices

# name -> (train, val, test, input shape). digits: 1,797 * (0.1, 0.2) rounds to 180 and 359,
# leaving 1,258 for train. MNIST-1D: the generator's 4,000 train split into 3,600 / 400, its own
# 1,000 test kept as is.
SIZES = {
    "mnist": (3600, 400, 1000, (1, 28, 28)),
    "digits": (1258, 180, 359, (1, 8, 8)),
    "mnist1d": (3600, 400, 1000, (1, 40)),
}
SIZES.update({f"{n}-raw": v for n, v in SIZES.items()})  # each also without the standardization


def _xy(ds: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.tensors[0], ds.tensors[1]


@pytest.fixture(scope="module")
def bundled() -> dict[str, Splits]:
    return {name: load_data(name) for name in SIZES}


def test_datasets_listing_names_every_bundled_set():
    assert set(DATASETS) == set(SIZES)
    assert all(isinstance(d, str) and d and "\n" not in d for d in DATASETS.values())


@pytest.mark.parametrize("name", sorted(SIZES))
def test_split_sizes_shapes_and_dtypes(bundled, name):
    s = bundled[name]
    n_train, n_val, n_test, shape = SIZES[name]
    assert (len(s.train), len(s.val), len(s.test)) == (n_train, n_val, n_test)
    assert s.name == name and s.num_classes == 10 and s.input_shape == shape and s.seed == 0
    for ds in (s.train, s.val, s.test):
        x, y = _xy(ds)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape
        assert set(y.unique().tolist()) == set(range(10))
        assert torch.isfinite(x).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"


@pytest.mark.parametrize("name", ["mnist", "digits", "mnist1d"])
def test_raw_variants_are_the_same_data_without_the_standardization(bundled, name):
    std, raw = bundled[name], bundled[f"{name}-raw"]
    # the record states the exact transform: (x - mean) / std with the train split's scalar statistics
    m = re.search(r"\(x - (-?[0-9.]+)\) / ([0-9.]+)", std.preprocessing)
    assert m and "standardized" in std.preprocessing and raw.preprocessing.endswith("not standardized")
    mean, sd = float(m.group(1)), float(m.group(2))
    x_raw = _xy(raw.train)[0].double()
    assert abs(float(x_raw.mean()) - mean) < 5e-5 and abs(float(x_raw.std(unbiased=False)) - sd) < 5e-5
    for split in ("train", "val", "test"):
        a, b = _xy(getattr(std, split))[0].double(), _xy(getattr(raw, split))[0].double()
        assert torch.allclose(a * sd + mean, b, atol=1e-3)  # the stated statistics have 4 decimals
        assert torch.equal(_xy(getattr(std, split))[1], _xy(getattr(raw, split))[1])
    if name != "mnist1d":  # pixels scaled to [0, 1]
        assert 0.0 <= float(x_raw.min()) and float(x_raw.max()) <= 1.0


def test_mnist_split_is_exactly_stratified(bundled):
    # 500 images per class: 360 / 40 / 100 per class in every split.
    s = bundled["mnist"]
    for ds, per_class in ((s.train, 360), (s.val, 40), (s.test, 100)):
        assert torch.bincount(_xy(ds)[1], minlength=10).tolist() == [per_class] * 10


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_split_class_counts_within_one_of_proportion(bundled, name):
    s = bundled[name]
    # For MNIST-1D only train/val are ours; the generator's test split is kept untouched.
    parts = [s.train, s.val] if name == "mnist1d" else [s.train, s.val, s.test]
    labels = [_xy(ds)[1] for ds in parts]
    total = torch.bincount(torch.cat(labels), minlength=10).double()
    n = total.sum()
    for y in labels:
        expected = total * len(y) / n
        assert (torch.bincount(y, minlength=10).double() - expected).abs().max().item() <= 1.0


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_splits_are_disjoint_and_cover_the_data(bundled, name):
    s = bundled[name]
    rows = [{r.numpy().tobytes() for r in _xy(ds)[0]} for ds in (s.train, s.val, s.test)]
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == sum(SIZES[name][:3])


@pytest.mark.parametrize("name", sorted(n for n in SIZES if not n.endswith("-raw")))
def test_train_split_normalized_with_its_own_statistics(bundled, name):
    s = bundled[name]
    x = _xy(s.train)[0].double()
    assert x.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert x.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_test_split_uses_train_statistics(bundled):
    # MNIST background pixels are 0 in every split, so they must map to the same value -mean/std;
    # per-split statistics would give each split its own minimum.
    s = bundled["mnist"]
    mins = {float(_xy(ds)[0].min()) for ds in (s.train, s.val, s.test)}
    assert len(mins) == 1 and -1.0 < mins.pop() < 0.0


@pytest.mark.parametrize("name", ["mnist", "digits", "mnist1d"])
def test_same_seed_same_splits_other_seed_other_splits(bundled, name):
    again, other = load_data(name), load_data(name, seed=1)
    for a, b in zip((bundled[name].train, bundled[name].val), (again.train, again.val)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert other.seed == 1 and len(other.train) == len(again.train)
    assert not torch.equal(other.train.tensors[0], again.train.tensors[0])


def test_mnist1d_generated_once_cached_as_npz_and_reused(tmp_path, monkeypatch):
    import effdl.data.bundled as bundled_mod

    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cache_dir() == tmp_path / "cache" and mnist1d_cache_files() == []

    np.random.seed(1234)
    random.seed(1234)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(1234)
    random.seed(1234)
    first = load_data("mnist1d")
    # The generator reseeds numpy's and Python's global generators; the caller's state survives.
    assert np.random.rand() == expect_np and random.random() == expect_py

    files = mnist1d_cache_files()
    assert len(files) == 1 and files[0].parent == tmp_path / "cache" / "data"
    with np.load(files[0], allow_pickle=False) as f:
        assert f["x"].shape == (4000, 40) and f["x_test"].shape == (1000, 40)
        assert np.array_equal(f["y_test"], first.test.tensors[1].numpy())
    assert not list(work.iterdir()), "nothing (no mnist1d pickle) may be written to the cwd"
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    mtime = files[0].stat().st_mtime_ns

    def tripwire():
        raise AssertionError("MNIST-1D was regenerated although a valid cache file exists")

    monkeypatch.setattr(bundled_mod, "_mnist1d_generate", tripwire)
    second = load_data("mnist1d")
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])


def test_corrupt_mnist1d_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    reference = load_data("mnist1d")
    path = mnist1d_cache_files()[0]
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_data("mnist1d")
    assert torch.equal(reference.test.tensors[0], again.test.tensors[0])
    with np.load(path, allow_pickle=False) as f:
        assert f["x"].shape == (4000, 40)


@pytest.mark.parametrize("seed", range(20))
def test_allocation_row_column_sums_and_within_one(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 60, size=rng.integers(2, 12))
    n = int(counts.sum())
    a, b = int(rng.integers(1, n // 3 + 1)), int(rng.integers(1, n // 3 + 1))
    sizes = [n - a - b, a, b]
    alloc = _allocate(counts, sizes)
    assert alloc.sum(1).tolist() == counts.tolist() and alloc.sum(0).tolist() == sizes
    assert np.abs(alloc - counts[:, None] * np.array(sizes)[None, :] / n).max() <= 1.0
    idx = stratified_indices(np.repeat(np.arange(len(counts)), counts), sizes, seed)
    assert sorted(np.concatenate(idx).tolist()) == list(range(n))


def _write_factory(tmp_path, body: str) -> str:
    path = tmp_path / "mydata.py"
    path.write_text("import torch\nfrom torch.utils.data import TensorDataset\n\n" + body)
    return f"{path}:make"


def test_factory_data_infers_classes_and_shape(tmp_path):
    spec = _write_factory(tmp_path, (
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    ds = lambda n: TensorDataset(torch.randn(n, 3, 5, 5, generator=g), torch.arange(n) % 4)\n"
        "    return ds(12), ds(4), ds(6)\n"
    ))
    s = load_data(spec)
    assert (s.num_classes, s.input_shape, s.name) == (4, (3, 5, 5), spec)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 6)


@pytest.mark.parametrize("body, message", [
    ("def make():\n    return [1, 2]\n", "must return \\(train, val, test\\)"),
    ("def make():\n    e = TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))\n"
     "    return e, e, e\n", "train split is empty"),
    ("def make():\n    return [1], [2], [3]\n", "\\(x tensor, y label\\) pairs"),
    ("def make():\n    d = TensorDataset(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 0.0]))\n"
     "    return d, d, d\n", "integer class ids"),
    ("def make():\n    raise RuntimeError('disk gone')\n", "disk gone"),
])
def test_bad_factory_data_raises_data_error(tmp_path, body, message):
    with pytest.raises(DataError, match=message):
        load_data(_write_factory(tmp_path, body))


def test_missing_factory_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"{tmp_path}/nope.py:make")


@pytest.mark.parametrize("name, hint", [("mnsit", "mnist"), ("digit", "digits"), ("mnist-1d", "mnist1d")])
def test_unknown_name_lists_choices_and_suggests(name, hint):
    with pytest.raises(DataError, match=f"Did you mean '{hint}'") as info:
        load_data(name)
    assert all(n in str(info.value) for n in DATASETS)
    assert isinstance(info.value, ValueError)
