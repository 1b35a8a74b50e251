"""Compact, exact, pickle-free storage of a tensor dict: the basis of "bytes on disk".

Each tensor is stored in the smaller of two layouts inside one safetensors file:

* ``dense``: the tensor as is, under its own name;
* ``bitmask``: a packed 1-bit occupancy mask (``<name>::mask``, uint8, numpy ``packbits`` order)
  plus the non-zero elements in the tensor's own dtype (``<name>::values``).

* ``nm``: N:M semi-structured sparsity (at most N non-zeros in every M consecutive elements of a
  row, rows = the first dimension, as prune.weights' N:M groups): exactly N values per group
  (``<name>::values``) plus each value's position in its group, log2(M) bits, packed
  (``<name>::index``). 1:4 costs 0.5 bit per element of metadata where a bitmask costs 1; for 2:4
  the two tie and the N:M layout (the one sparse hardware reads) is kept.

"Non-zero" means a non-zero *bit pattern*, so ``-0.0`` and NaN payloads survive: a load is
bit-identical to what was saved. The layout of every tensor (its dtype, shape and the keys of its
parts) is JSON in the safetensors metadata under ``effdl.compact``; tensors that are the same
memory (tied weights) are stored once and come back as one shared tensor under every name.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effdl.core.compressed import CompressedModel
from effdl.core.errors import ArtifactError, ConfigError, ModelError
from effdl.core.io import atomic_write

LAYOUT_KEY = "effdl.compact"
FORMAT_VERSION = 1
# A bitmask tensor adds a second header entry and a longer layout record; charge it so that a
# tensor only goes sparse when the file really gets smaller.
SPARSE_HEADER_OVERHEAD = 96

# Reinterpret a tensor's bits as an integer of the same width: zero tests and copies on the bits.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"compact layout names an unknown dtype {name!r}: the file is corrupt; re-save it")
    return dtype


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()]) if t.element_size() in _BITS and t.dtype != _BITS[t.element_size()] else t


def _storage_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's memory view: equal keys mean the very same elements (a tie)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def unique_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split ``tensors`` into the first name of each distinct memory view and the other names
    (aliases, e.g. tied weights) mapped to that first name."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in tensors.items():
        key = _storage_key(t) if isinstance(t, torch.Tensor) else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = t
    return unique, aliases


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor owning exactly its bytes (safetensors refuses partial shared storage)."""
    t = t.detach().cpu().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


NM_GROUPS = (4, 8, 16)  # M values tried for the N:M layout


def _nm_plan(occupied: torch.Tensor, shape: list[int]) -> tuple[int, int] | None:
    """The (N, M) with the fewest bytes for which every row-group of M holds <= N non-zeros."""
    if len(shape) < 2:
        return None
    best = None
    cols = occupied.numel() // shape[0]
    for m in NM_GROUPS:
        if cols % m:
            continue
        n = int(occupied.reshape(-1, m).sum(1).max())
        if n < m and (best is None or n * math.log2(m) / m < best[0] * math.log2(best[1]) / best[1]):
            best = (max(n, 1), m)
    return best


def _pack_index(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """Positions (< 2**bits) as a packed big-endian bit stream, ``bits`` per position."""
    shifts = torch.arange(bits - 1, -1, -1)
    stream = ((idx.reshape(-1, 1).long() >> shifts) & 1).reshape(-1).to(torch.uint8)
    return torch.from_numpy(np.packbits(stream.numpy()))


def _unpack_index(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    stream = torch.from_numpy(np.unpackbits(packed.numpy())[: count * bits].copy()).long().reshape(count, bits)
    return (stream << torch.arange(bits - 1, -1, -1)).sum(1)


def _encode(name: str, t: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    """(layout record, parts to store) for one tensor, choosing the smaller layout."""
    record = {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
    n, size = t.numel(), t.element_size()
    if n > 0 and t.element_size() in _BITS and not t.is_complex():
        flat = t.reshape(-1)
        occupied = _bits(flat) != 0
        nnz = int(occupied.sum())
        sparse_bytes = math.ceil(n / 8) + nnz * size + SPARSE_HEADER_OVERHEAD
        nm = _nm_plan(occupied, list(t.shape))
        if nm is not None:
            k, m = nm
            groups = n // m
            bits = int(math.log2(m))
            nm_bytes = groups * k * size + math.ceil(groups * k * bits / 8) + SPARSE_HEADER_OVERHEAD
            if nm_bytes <= min(sparse_bytes, n * size - 1):
                # the k positions of each group: its non-zeros first, then zero positions as filler
                order = torch.argsort((~occupied.reshape(groups, m)).to(torch.uint8), dim=1, stable=True)[:, :k]
                values = flat.reshape(groups, m).gather(1, order).reshape(-1).clone()
                record.update(layout="nm", n=k, m=m, values=f"{name}::values", index=f"{name}::index")
                return record, {f"{name}::values": values, f"{name}::index": _pack_index(order, bits)}
        if sparse_bytes < n * size:
            mask = torch.from_numpy(np.packbits(occupied.numpy()))
            values = flat[occupied]  # boolean indexing copies: owns its memory
            record.update(layout="bitmask", mask=f"{name}::mask", values=f"{name}::values", nnz=nnz)
            return record, {f"{name}::mask": mask, f"{name}::values": values}
    record.update(layout="dense", key=name)
    return record, {name: _owned(t)}


def save_compact(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> int:
    """Write ``tensors`` to ``path`` (atomically) in the compact layout; return the bytes written.

    ``metadata`` is stored alongside (string keys and values, like safetensors metadata); read it
    back with :func:`read_metadata`.
    """
    from safetensors.torch import save_file

    if not isinstance(tensors, dict):
        raise ConfigError(f"save_compact needs a dict of name -> tensor, got {type(tensors).__name__}")
    metadata = dict(metadata or {})
    if LAYOUT_KEY in metadata:
        raise ConfigError(f"metadata key {LAYOUT_KEY!r} is reserved for the storage layout: rename it")
    bad_meta = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad_meta:
        raise ConfigError(f"metadata must map str to str; these keys do not: {bad_meta[:5]}")
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"save_compact needs str -> Tensor entries; these are not: {bad[:5]}")
    not_dense = [k for k, v in tensors.items() if v.layout != torch.strided]
    if not_dense:
        raise ConfigError(f"tensors {not_dense[:5]} are not dense (strided); pass t.to_dense() instead")
    unique, aliases = unique_tensors(tensors)
    layout: dict[str, dict] = {}
    parts: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in unique.items():
        record, new_parts = _encode(name, t.detach().cpu())
        clash = [k for k in new_parts if k in parts or (k in tensors and k != name)]
        if clash:
            raise ConfigError(
                f"tensor names {clash} clash with the compact layout of {name!r} "
                "(names ending in '::mask' or '::values' are reserved): rename them"
            )
        layout[name] = record
        for key, part in new_parts.items():
            # two different views of one storage (x and x.view(...)): safetensors refuses to share
            ptr = part.untyped_storage().data_ptr()
            parts[key] = part.clone() if part.numel() and ptr in storages else part
            storages.add(ptr)
    metadata[LAYOUT_KEY] = json.dumps(
        {"version": FORMAT_VERSION, "tensors": layout, "aliases": aliases}, separators=(",", ":")
    )
    atomic_write(path, lambda tmp: save_file(parts, tmp, metadata=metadata))
    return os.path.getsize(path)


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[Any, dict[str, str]]]:
    """(safetensors handle, metadata) or an ArtifactError naming the file; closed on exit."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"compact tensor file {str(path)!r} does not exist: check the path")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        meta = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"compact tensor file {str(path)!r} is corrupt or truncated ({str(exc).splitlines()[0]}): re-save it"
        ) from None
    with handle:
        yield handle, meta


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The user metadata stored by :func:`save_compact` (the layout record left out)."""
    with _open(path) as (_, meta):
        pass
    meta.pop(LAYOUT_KEY, None)
    return meta


def _layout(meta: dict[str, str], keys: set[str], path) -> tuple[dict, dict]:
    """Parse the layout record; a plain safetensors file (no record) loads as all-dense."""
    if LAYOUT_KEY not in meta:
        return {k: {"layout": "dense", "key": k} for k in keys}, {}
    try:
        doc = json.loads(meta[LAYOUT_KEY])
        tensors, aliases = doc["tensors"], doc.get("aliases", {})
        if doc.get("version") != FORMAT_VERSION or not isinstance(tensors, dict) or not isinstance(aliases, dict):
            raise ValueError(f"unsupported layout version {doc.get('version')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"compact tensor file {str(path)!r} has an unreadable layout record ({exc}): re-save it") from None
    return tensors, aliases


def _decode(name: str, rec: dict, handle, path) -> tuple[torch.Tensor, set[str]]:
    """Rebuild one tensor, checking every part against its record; return it and the keys used."""
    where = f"tensor {name!r} in {str(path)!r}"
    try:
        kind = rec["layout"]
        if kind == "dense":
            t = handle.get_tensor(rec["key"])
            if "dtype" in rec and (_dtype_name(t.dtype) != rec["dtype"] or list(t.shape) != rec["shape"]):
                raise ValueError(f"stored {_dtype_name(t.dtype)}{list(t.shape)}, layout says {rec['dtype']}{rec['shape']}")
            return t, {rec["key"]}
        dtype, shape = _dtype_from_name(rec["dtype"]), [int(s) for s in rec["shape"]]
        n = math.prod(shape)
        if kind == "nm":
            return _decode_nm(rec, handle, dtype, shape, n), {rec["values"], rec["index"]}
        if kind != "bitmask":
            raise ValueError(f"unknown layout {kind!r}")
        mask, values = handle.get_tensor(rec["mask"]), handle.get_tensor(rec["values"])
        if mask.dtype != torch.uint8 or list(mask.shape) != [math.ceil(n / 8)]:
            raise ValueError(f"mask is {_dtype_name(mask.dtype)}{list(mask.shape)}, expected uint8[{math.ceil(n / 8)}]")
        occupied = torch.from_numpy(np.unpackbits(mask.numpy())).bool()
        if occupied[n:].any():
            raise ValueError("mask has bits set past the end of the tensor")
        occupied = occupied[:n]
        count = int(occupied.sum())
        if values.dtype != dtype or values.dim() != 1 or values.numel() != count or rec.get("nnz", count) != count:
            raise ValueError(
                f"values are {_dtype_name(values.dtype)}[{values.numel()}], mask expects {rec['dtype']}[{count}] "
                f"(record says {rec.get('nnz')})"
            )
        out = torch.zeros(n, dtype=dtype)
        _bits(out)[occupied] = _bits(values)  # copy bit patterns, not numbers
        return out.reshape(shape), {rec["mask"], rec["values"]}
    except ArtifactError:
        raise
    except Exception as exc:  # missing key, wrong type in the record, bad part: all mean a corrupt file
        raise ArtifactError(f"{where} is inconsistent with its layout record ({exc}): the file is corrupt; re-save it") from None


def _decode_nm(rec: dict, handle, dtype: torch.dtype, shape: list[int], n: int) -> torch.Tensor:
    k, m = int(rec["n"]), int(rec["m"])
    if m not in NM_GROUPS or not 1 <= k < m or n % m:
        raise ValueError(f"N:M record {k}:{m} does not fit a tensor of {n} elements")
    groups, bits = n // m, int(math.log2(m))
    values, packed = handle.get_tensor(rec["values"]), handle.get_tensor(rec["index"])
    if values.dtype != dtype or list(values.shape) != [groups * k]:
        raise ValueError(f"values are {_dtype_name(values.dtype)}{list(values.shape)}, expected {rec['dtype']}[{groups * k}]")
    if packed.dtype != torch.uint8 or list(packed.shape) != [math.ceil(groups * k * bits / 8)]:
        raise ValueError(f"index is {_dtype_name(packed.dtype)}{list(packed.shape)}, expected uint8[{math.ceil(groups * k * bits / 8)}]")
    index = _unpack_index(packed, bits, groups * k).reshape(groups, k)
    out = torch.zeros(groups, m, dtype=dtype)
    _bits(out).scatter_(1, index, _bits(values).reshape(groups, k))
    return out.reshape(shape)


def load_compact(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Exact inverse of :func:`save_compact`: same names, dtypes, shapes and bits (ties kept)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    with _open(path) as (handle, meta):
        keys = set(handle.keys())
        layout, aliases = _layout(meta, keys, path)
        for name, rec in layout.items():
            out[name], parts = _decode(name, rec, handle, path)
            used |= parts
    if used != keys:
        raise ArtifactError(
            f"compact tensor file {str(path)!r} holds entries its layout does not describe "
            f"({sorted(keys - used)[:5]}): the file is corrupt; re-save it"
        )
    for name, target in aliases.items():
        if target not in out:
            raise ArtifactError(f"compact tensor file {str(path)!r} ties {name!r} to missing tensor {target!r}: re-save it")
        out[name] = out[target]
    return out


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that represent ``model`` on disk.

    A ``CompressedModel`` (INT8 weights + scales, packed codes, clusters, ...) supplies them itself
    (``storage_tensors()``); any other model gives its state dict, detached and contiguous. Tied
    tensors stay one tensor under several names, so :func:`save_compact` stores them once.
    """
    if isinstance(model, CompressedModel):
        tensors = model.storage_tensors()
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
        ):
            raise ModelError(
                f"{type(model).__name__}.storage_tensors() must return a dict of str -> Tensor, "
                f"got {type(tensors).__name__}: fix that method"
            )
    elif isinstance(model, torch.nn.Module):
        tensors = model.state_dict()
    else:
        raise ModelError(f"model_tensors needs an nn.Module, got {type(model).__name__}")
    return {k: v.detach().contiguous() for k, v in tensors.items()}
