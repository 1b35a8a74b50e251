"""Where generated data and trained baselines live between runs."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EFFDL_CACHE`` or ``~/.cache/effdl``; created on first use."""
    root = os.environ.get("EFFDL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "effdl")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
