"""Static footprint of a model: parameter counts, non-zeros and bytes (dense, on disk, gzipped)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
import torch.nn.utils.parametrize  # noqa: F401  (is_parametrized)

from effdl.core.errors import ArtifactError, ModelError


def _unique_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Each parameter once: ``named_parameters()`` drops repeated objects, ``unique_tensors`` also
    drops distinct Parameter objects viewing the very same memory (ties made by sharing ``.data``)."""
    from effdl.deploy.storage import unique_tensors  # deferred: deploy may import metrics

    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"expected an nn.Module, got {type(model).__name__}")
    unique, _ = unique_tensors(dict(model.named_parameters()))
    return list(unique.values())


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements, tied weights counted once (buffers are not parameters)."""
    return sum(p.numel() for p in _unique_parameters(model))


def count_nonzero(model: torch.nn.Module) -> int:
    """Number of non-zero parameter elements, tied weights counted once."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique_parameters(model))


def dense_fp32_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict (parameters *and* buffers) as an FP32 safetensors file.

    Floating tensors are cast to float32, integer buffers (``num_batches_tracked``) kept; tied
    tensors are stored once. Measured by serialising to bytes, so the header is included.
    """
    from safetensors.torch import save

    from effdl.deploy.storage import unique_tensors  # deferred: deploy may import metrics

    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"expected an nn.Module, got {type(model).__name__}")
    unique, _ = unique_tensors(model.state_dict())
    # copies: safetensors refuses tensors that share memory, and bytes do not depend on layout
    state = {
        k: v.detach().cpu().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True).contiguous()
        for k, v in unique.items()
    }
    return len(save(state))


def file_size(path: str | os.PathLike) -> int:
    """Size of a file in bytes."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"file {str(p)!r} does not exist: check the path")
    return p.stat().st_size


def gzip_size(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview) -> int:
    """Bytes after gzip at level 9 (mtime fixed at 0, so the number is reproducible).

    A cheap entropy proxy: zeros and repeated values compress, so it shows what pruning or
    clustering would save with a general-purpose compressor.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        if not p.is_file():
            raise ArtifactError(f"file {str(p)!r} does not exist: check the path")
        data = p.read_bytes()
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def layer_sparsity(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per weighted layer (Conv/Linear, shared weights once): weight count and fraction of exact zeros.

    The report draws this as the per-layer sparsity heatmap.
    """
    out: dict[str, dict[str, float]] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and isinstance(w, torch.Tensor):
            # a masked (parametrized) weight is recomputed on access: identify it by its stored original
            parametrized = torch.nn.utils.parametrize.is_parametrized(m, "weight")
            key = id(m.parametrizations.weight.original) if parametrized else id(w)
            if key in seen:
                continue
            seen.add(key)
            n = w.numel()
            out[name or "(root)"] = {"params": n, "sparsity": float((w == 0).sum()) / max(n, 1)}
    return out
