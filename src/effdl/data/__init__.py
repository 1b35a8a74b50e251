"""Bundled real data sets (MNIST subset, scikit-learn digits, MNIST-1D) and user data factories.

``load_data(name)`` returns :class:`Splits`; nothing is ever downloaded. Text data sets (STS-B,
sentiment tweets, Austen's novels) come from ``load_text(name)`` (see :mod:`effdl.data.text`).
"""
from __future__ import annotations

from ..core.errors import DataError, suggest
from .bundled import DATASETS, LOADERS, mnist1d_cache_files
from .cache import cache_dir
from .factory import is_factory_spec, load_factory_data
from .splits import Splits
from .synthetic import PREFIX as SYNTHETIC_PREFIX, load_synthetic
from .text import (
    TEXT_DATASETS,
    TEXT_PREPROCESSING,
    Corpus,
    LabelledText,
    SentencePairs,
    TextData,
    load_text,
)

__all__ = ["DATASETS", "Splits", "cache_dir", "load_data", "mnist1d_cache_files",
           "TEXT_DATASETS", "TEXT_PREPROCESSING", "Corpus", "LabelledText", "SentencePairs",
           "TextData", "load_text"]


def load_data(name: str, *, seed: int = 0) -> Splits:
    """A bundled data set by name (see ``DATASETS``) or ``path/to/file.py:factory``.

    ``seed`` fixes the stratified split; the same name and seed always give the same splits.
    """
    if not isinstance(name, str):
        raise DataError(f"data name must be a string, got {type(name).__name__}")
    if name in LOADERS:
        return LOADERS[name](seed)
    if name.startswith(SYNTHETIC_PREFIX):
        return load_synthetic(name, seed)
    if is_factory_spec(name):
        return load_factory_data(name, seed)
    raise DataError(
        f"unknown data set {name!r}: use one of {sorted(DATASETS)}, path/to/file.py:factory, "
        "or synthetic:CxHxW (latency-only)."
        + suggest(name, DATASETS)
    )
