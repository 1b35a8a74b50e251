"""Deep Compression storage (Han et al. 2016): pruned + clustered weights, optionally Huffman coded.

A clustered model is written as ONE compact safetensors file (``deploy.storage.save_compact``):
every tensor of the state dict that is not part of a clustered layer under its own name (unclustered
layers, norms), plus one uint8 tensor ``effdl.deep_compression`` holding all clustered layers (their
weights and float32 biases) in the container below: one entry instead of two per layer saves the
safetensors header and layout records (about 130 bytes each, which matters for LeNet-size models). ``storage_tensors`` returns exactly these tensors, so the size ``measure`` records
is the size of this file, and ``load_deep_compressed`` decodes it back bit for bit.

Container, little endian, version 1::

    b"EDC" u8 version  u16 n_layers
    per layer:
      u16 name length, name (UTF-8; the state-dict key of the dense weight, e.g. "1.weight")
      u8 ndim, ndim x u32 shape
      u8 bits b, u8 mode, u8 k, u8 has_bias
      2**b x f32 codebook, then (has_bias) shape[0] x f32 bias
      mode 0 (pruned + clustered): u32 nnz, ceil(numel / 8) bytes occupancy bitmask (numpy packbits
        order), ceil(nnz * b / 8) bytes of b-bit cluster indices of the non-zeros, in order
      mode 1 (+ Huffman; written only where smaller than mode 0): two Huffman streams, the relative-index gaps (k bits, see ``huffman``)
        then the cluster indices; each stream = code table (``huffman.pack_table``), u32 symbol
        count, u32 byte count, bitstream
"""
from __future__ import annotations

import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn

from ...core.errors import ArtifactError, ConfigError
from ...core.io import load_state_into
from ...deploy.storage import load_compact, model_tensors, save_compact
from . import huffman as hf
from .cluster import SharedWeights, clustered_layers, unwrap

__all__ = ["BLOB_KEY", "decode_blob", "encode_layer", "load_deep_compressed", "save_deep_compressed", "storage_record",
           "storage_tensors"]

BLOB_KEY = "effdl.deep_compression"
MAGIC, VERSION = b"EDC", 1
FIXED, HUFFMAN = 0, 1


def _weight_key(name: str) -> str:
    return f"{name}.weight" if name else "weight"


def _pack_indices(idx: np.ndarray, bits: int) -> bytes:
    return np.packbits(np.unpackbits(idx.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]).tobytes()


def _unpack_indices(buf: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return np.packbits(np.pad(flat, ((0, 0), (8 - bits, 0))), axis=1)[:, 0]


def _stream(symbols: np.ndarray) -> bytes:
    data, lengths = hf.encode(symbols)
    return hf.pack_table(lengths) + struct.pack("<II", len(symbols), len(data)) + data


def _best_k(positions: np.ndarray) -> int:
    """The gap width (1..8 bits) whose Huffman-coded gaps + code table are smallest."""
    def cost(k: int) -> int:
        gaps = hf.positions_to_gaps(positions, k)
        freqs = dict(enumerate(np.bincount(gaps, minlength=1 << k).tolist()))
        lengths = hf.code_lengths(freqs)
        return hf.encoded_bits(freqs, lengths) + 8 * len(hf.pack_table(lengths))
    return min(range(1, 9), key=cost)


def _bias(m: nn.Module) -> torch.Tensor | None:
    """The layer's bias when the container can hold it (float32, one per output channel)."""
    b = getattr(m, "bias", None)
    ok = isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.dim() == 1 and b.numel() == m.weight.shape[0]
    return b if ok else None


def encode_layer(name: str, p: SharedWeights, huffman: bool, index_bits: int = 0,
                 bias: torch.Tensor | None = None) -> bytes:
    """One layer's record of the container (``index_bits`` 0: the smallest gap width).

    With ``huffman`` the record is Huffman coded unless the fixed layout is smaller (a layer of a
    few hundred weights, where the code tables cost more than they save).
    """
    fixed = _record(name, p, 0, bias)
    if not huffman:
        return fixed
    return _smaller(fixed, _record(name, p, _gap_bits(p, index_bits), bias))


def _smaller(fixed: bytes, coded: bytes) -> bytes:
    return coded if len(coded) < len(fixed) else fixed


def _gap_bits(p: SharedWeights, index_bits: int) -> int:
    return index_bits or _best_k(np.flatnonzero(p.mask.detach().cpu().reshape(-1).numpy()))


def _record(name: str, p: SharedWeights, k: int, bias: torch.Tensor | None) -> bytes:
    """The layer's record: fixed layout when ``k`` (the gap width) is 0, else Huffman coded."""
    huffman = k > 0
    mask = p.mask.detach().cpu().reshape(-1).numpy()
    idx = p.indices.detach().cpu().reshape(-1).numpy()[mask]
    codebook = p.codebook.detach().cpu().float().contiguous()
    key = name.encode("utf-8")
    shape = tuple(p.mask.shape)
    positions = np.flatnonzero(mask)
    out = [struct.pack(f"<H{len(key)}sB{len(shape)}I", len(key), key, len(shape), *shape),
           struct.pack("<BBBB", p.bits, HUFFMAN if huffman else FIXED, k, bias is not None),
           codebook.numpy().astype("<f4").tobytes()]
    if bias is not None:
        out.append(bias.detach().cpu().contiguous().numpy().astype("<f4").tobytes())
    if huffman:
        out += [_stream(hf.positions_to_gaps(positions, k)), _stream(idx)]
    else:
        out += [struct.pack("<I", int(mask.sum())), np.packbits(mask).tobytes(), _pack_indices(idx, p.bits)]
    return b"".join(out)


def _clustered(model: nn.Module) -> list:
    layers = clustered_layers(model)
    if not layers:
        raise ConfigError("the model has no clustered layer: apply share.cluster before Deep Compression storage")
    return layers


def _header(n_layers: int) -> bytes:
    return MAGIC + struct.pack("<BH", VERSION, n_layers)


def encode_model(model: nn.Module, huffman: bool | None = None) -> bytes:
    """The container of all clustered layers (``huffman`` None: each layer's own setting)."""
    layers = _clustered(model)
    parts = [_header(len(layers))]
    for name, m, p in layers:
        parts.append(encode_layer(_weight_key(name), p, p.huffman if huffman is None else huffman, p.index_bits,
                                  _bias(m)))
    return b"".join(parts)


def storage_record(model: nn.Module) -> dict:
    """What the container holds for each clustered layer, for the report (share.cluster attaches it).

    Per layer: index bits b, 2**b shared values, parameters, non-zeros, sparsity, and the bytes of
    its record as ``encode_layer`` writes it (name + shape header, codebook, bias, positions +
    indices) with fixed-width indices and Huffman coded, and which of the two the file holds
    (``encode_model`` with the layer's own setting). None of these depend on the codebook's values,
    so training the centroids later leaves them true. ``container_bytes`` = ``len(encode_model(model))``.
    """
    layers, stored = {}, 0
    for name, m, p in _clustered(model):
        key, bias = _weight_key(name), _bias(m)
        k = _gap_bits(p, p.index_bits)
        fixed, coded = _record(key, p, 0, bias), _record(key, p, k, bias)
        kept = _smaller(fixed, coded) if p.huffman else fixed
        stored += len(kept)
        numel, nnz = p.mask.numel(), int(p.mask.sum())
        layers[name] = {
            "bits": p.bits, "shared_values": p.codebook.numel(), "params": numel, "nonzero": nnz,
            "sparsity": 1.0 - nnz / numel, "codebook_bytes": 4 * p.codebook.numel(),
            "bias_bytes": 0 if bias is None else 4 * bias.numel(),
            "bytes_fixed": len(fixed), "bytes_huffman": len(coded), "gap_bits": k,
            "stored": "huffman" if kept is coded else "fixed", "bytes_stored": len(kept),
            "dense_bytes": 4 * numel + (0 if bias is None else 4 * bias.numel()),
        }
    return {"layers": layers, "container_bytes": len(_header(len(layers))) + stored}


def storage_tensors(model: nn.Module, huffman: bool | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the Deep Compression file: unclustered state-dict entries (of a ClusteredModel's
    float model) + the container."""
    model = unwrap(model)
    layers = _clustered(model)
    prefixes = tuple(f"{n}.parametrizations.weight." if n else "parametrizations.weight." for n, _, _ in layers)
    inside = {f"{n}.bias" if n else "bias" for n, m, _ in layers if _bias(m) is not None}
    out = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes) and k not in inside}
    out[BLOB_KEY] = torch.frombuffer(bytearray(encode_model(model, huffman)), dtype=torch.uint8)
    return out


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.at = memoryview(buf), 0

    def take(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.buf, self.at)
        self.at += struct.calcsize("<" + fmt)
        return vals

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.buf):
            raise struct.error(f"needs {n} bytes at offset {self.at}, only {len(self.buf) - self.at} left")
        out = bytes(self.buf[self.at : self.at + n])
        self.at += n
        return out

    def stream(self) -> np.ndarray:
        lengths, self.at = hf.unpack_table(self.buf, self.at)
        count, nbytes = self.take("II")
        return np.asarray(hf.decode(self.raw(nbytes), lengths, count), dtype=np.int64)


def decode_blob(buf: bytes) -> dict[str, torch.Tensor]:
    """Dense float32 weight (and bias) of every layer in a container, by state-dict key
    (inverse of ``encode_model``)."""
    r = _Reader(buf)
    out: dict[str, torch.Tensor] = {}
    try:
        if r.raw(3) != MAGIC:
            raise ValueError("bad magic bytes")
        version, n_layers = r.take("BH")
        if version != VERSION:
            raise ValueError(f"unsupported container version {version}")
        for _ in range(n_layers):
            (n,) = r.take("H")
            name = r.raw(n).decode("utf-8")
            (ndim,) = r.take("B")
            shape = r.take(f"{ndim}I")
            bits, mode, k, has_bias = r.take("BBBB")
            codebook = np.frombuffer(r.raw(4 << bits), dtype="<f4").astype(np.float32)
            if has_bias:
                bias = np.frombuffer(r.raw(4 * shape[0]), dtype="<f4").astype(np.float32)
                out[name.removesuffix("weight") + "bias"] = torch.from_numpy(bias)
            numel = math.prod(shape)
            if mode == FIXED:
                (nnz,) = r.take("I")
                mask = np.unpackbits(np.frombuffer(r.raw(math.ceil(numel / 8)), dtype=np.uint8))[:numel].astype(bool)
                positions = np.flatnonzero(mask)
                idx = _unpack_indices(r.raw(math.ceil(nnz * bits / 8)), bits, nnz)
            elif mode == HUFFMAN:
                positions = hf.gaps_to_positions(r.stream(), k)
                idx = r.stream()
            else:
                raise ValueError(f"unknown mode {mode}")
            if len(idx) != len(positions) or (len(positions) and positions[-1] >= numel) or (len(idx) and idx.max() >= len(codebook)):
                raise ValueError(f"layer {name!r}: {len(positions)} positions and {len(idx)} indices do not fit shape {shape}")
            w = np.zeros(numel, dtype=np.float32)
            w[positions] = codebook[idx]
            out[name] = torch.from_numpy(w).reshape(shape)
        if r.at != len(r.buf):
            raise ValueError(f"{len(r.buf) - r.at} trailing bytes")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"unreadable Deep Compression container ({exc}): the file is corrupt; re-save it") from None
    return out


def save_deep_compressed(model: nn.Module, path: str | os.PathLike, huffman: bool | None = None) -> int:
    """Write ``model`` (a share.cluster result) to one file; return the bytes written.

    ``huffman`` None uses the setting the model was clustered with; the file is the one whose size
    ``measure`` reports.
    """
    tensors = model_tensors(model) if huffman is None else storage_tensors(model, huffman)
    if BLOB_KEY not in tensors:
        raise ConfigError("the model has no clustered layer: apply share.cluster before save_deep_compressed")
    return save_compact(tensors, path)


def load_deep_compressed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a Deep Compression file into ``model`` (a freshly built, unclustered model of the same
    architecture): every weight comes back bit-identical to the clustered model's."""
    if clustered_layers(model):
        raise ConfigError("load_deep_compressed needs a freshly built (unclustered) model of the same architecture")
    tensors = load_compact(path)
    blob = tensors.pop(BLOB_KEY, None)
    if blob is None:
        raise ArtifactError(f"{str(path)!r} holds no {BLOB_KEY!r} tensor: it is not a Deep Compression file")
    weights = decode_blob(blob.numpy().tobytes())
    clash = sorted(set(weights) & set(tensors))
    if clash:
        raise ArtifactError(f"{str(path)!r} stores {clash[:3]} twice: the file is corrupt; re-save it")
    return load_state_into(model, {**tensors, **weights}, str(path))
