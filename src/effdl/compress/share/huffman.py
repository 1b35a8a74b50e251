"""Canonical Huffman coding of integer symbol streams, and Deep Compression's relative indices.

Huffman (1952): repeatedly merge the two least frequent subtrees (``heapq``); a symbol's code
length is its depth. The codes themselves are *canonical*: symbols sorted by (length, symbol) get
consecutive binary numbers, so the code lengths alone define the code and the stored table is just
"how many codes of each length" plus the symbols in that order (as JPEG's DHT segment does).

A stream of one distinct symbol gets a 1-bit code (a tree needs at least one edge); an empty stream
encodes to zero bytes. Bits are written most significant first, the last byte padded with zeros;
the decoder is told how many symbols to read, so padding never decodes.

Relative indices (Han et al. 2016, Deep Compression): the positions of the non-zeros of a sparse
tensor are stored as gaps (zeros skipped before each non-zero) of ``k`` bits. A gap that does not
fit is split with *filler* symbols: symbol ``F = 2**k - 1`` means "skip F zeros, no weight here";
symbols ``0 .. F-1`` mean "skip that many zeros, then a non-zero". (Han's filler is a stored zero
weight; here the filler carries no weight at all, which is never larger.)
"""
from __future__ import annotations

import heapq
import struct
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ...core.errors import ArtifactError, ConfigError

__all__ = [
    "canonical_codes", "code_lengths", "decode", "encode", "encoded_bits", "gaps_to_positions",
    "pack_table", "positions_to_gaps", "unpack_table",
]


def code_lengths(freqs: dict[int, int]) -> dict[int, int]:
    """Huffman code length of each symbol with a positive count (ties broken by symbol, so the
    result is deterministic)."""
    live = {int(s): int(f) for s, f in freqs.items() if f > 0}
    if not live:
        return {}
    if len(live) == 1:
        return {next(iter(live)): 1}
    # heap items: (weight, smallest symbol in the subtree, symbols of the subtree)
    heap = [(f, s, [s]) for s, f in sorted(live.items())]
    heapq.heapify(heap)
    depth = dict.fromkeys(live, 0)
    while len(heap) > 1:
        f1, t1, s1 = heapq.heappop(heap)
        f2, t2, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol under the new node goes one level deeper
            depth[s] += 1
        heapq.heappush(heap, (f1 + f2, min(t1, t2), s1 + s2))
    return depth


def canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical code of each symbol, as a '0'/'1' string, from its code length."""
    codes: dict[int, str] = {}
    code, prev = 0, 0
    for sym, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[sym] = format(code, f"0{n}b")
        code, prev = code + 1, n
    return codes


def encoded_bits(freqs: dict[int, int], lengths: dict[int, int]) -> int:
    return sum(f * lengths[s] for s, f in freqs.items() if f > 0)


def encode(symbols: Sequence[int] | np.ndarray) -> tuple[bytes, dict[int, int]]:
    """(bitstream, code lengths) of a stream of non-negative integers."""
    syms = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if syms.size and syms.min() < 0:
        raise ConfigError("Huffman symbols must be non-negative integers: offset the stream first")
    lengths = code_lengths(Counter(syms.tolist()))
    if not syms.size:
        return b"", lengths
    codes = canonical_codes(lengths)
    bits = "".join([codes[s] for s in syms.tolist()])
    return np.packbits(np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")).tobytes(), lengths


def decode(data: bytes, lengths: dict[int, int], count: int) -> list[int]:
    """The ``count`` symbols coded in ``data`` (inverse of :func:`encode`)."""
    if count == 0:
        return []
    if not lengths:
        raise ArtifactError(f"a Huffman stream of {count} symbols has an empty code table: the file is corrupt; re-save it")
    # canonical decoding: at each length, codes are consecutive from first[n]
    order = sorted(lengths.items(), key=lambda kv: (kv[1], kv[0]))
    max_len = order[-1][1]
    per_len = Counter(n for _, n in order)
    first, offset = [0] * (max_len + 2), [0] * (max_len + 2)
    code, seen = 0, 0
    for n in range(1, max_len + 1):
        first[n], offset[n] = code, seen
        code = (code + per_len[n]) << 1
        seen += per_len[n]
    table = [s for s, _ in order]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    out: list[int] = []
    code = n = 0
    for b in bits:
        code = (code << 1) | b
        n += 1
        if code - first[n] < per_len[n]:
            out.append(table[offset[n] + code - first[n]])
            if len(out) == count:
                return out
            code = n = 0
        elif n == max_len:
            break
    raise ArtifactError(
        f"Huffman stream ends after {len(out)} of {count} symbols (or holds an invalid code): the file is corrupt; re-save it"
    )


# -- the code table on disk ----------------------------------------------------------------------
# u8 max length L, u8 symbol width W (1, 2 or 4 bytes), L x u16 counts of codes per length, then the
# symbols in canonical order as W-byte unsigned integers (little endian).
_WIDTH = {1: "B", 2: "H", 4: "I"}


def pack_table(lengths: dict[int, int]) -> bytes:
    if not lengths:
        return struct.pack("<BB", 0, 1)
    order = sorted(lengths.items(), key=lambda kv: (kv[1], kv[0]))
    max_len, top = order[-1][1], max(lengths)
    if max_len > 255:
        raise ConfigError(f"a Huffman code of length {max_len} does not fit the table format (max 255)")
    width = next(w for w in (1, 2, 4) if top < 1 << (8 * w))
    per_len = Counter(n for _, n in order)
    counts = [per_len[n] for n in range(1, max_len + 1)]
    return (struct.pack(f"<BB{max_len}H", max_len, width, *counts)
            + struct.pack(f"<{len(order)}{_WIDTH[width]}", *(s for s, _ in order)))


def unpack_table(buf: bytes | memoryview, at: int = 0) -> tuple[dict[int, int], int]:
    """(code lengths, offset just past the table) read from ``buf`` at ``at``."""
    try:
        max_len, width = struct.unpack_from("<BB", buf, at)
        at += 2
        counts = struct.unpack_from(f"<{max_len}H", buf, at)
        at += 2 * max_len
        n = sum(counts)
        syms = struct.unpack_from(f"<{n}{_WIDTH[width]}", buf, at)
        at += n * width
    except (struct.error, KeyError) as exc:
        raise ArtifactError(f"unreadable Huffman code table ({exc}): the file is corrupt; re-save it") from None
    lengths, i = {}, 0
    for length, c in enumerate(counts, start=1):
        for s in syms[i : i + c]:
            lengths[int(s)] = length
        i += c
    return lengths, at


# -- relative indices -----------------------------------------------------------------------------
def positions_to_gaps(positions: np.ndarray, k: int) -> np.ndarray:
    """Gap symbols (0 .. 2**k - 1) of the sorted flat positions of the non-zeros."""
    if not 1 <= k <= 16:
        raise ConfigError(f"relative-index bits must be in 1..16, got {k}")
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.size and (pos[0] < 0 or np.any(np.diff(pos) <= 0)):
        raise ConfigError("positions must be non-negative and strictly increasing")
    filler = (1 << k) - 1
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each non-zero
    n_fill, rest = np.divmod(gaps, filler)
    out = np.full(int(n_fill.sum()) + pos.size, filler, dtype=np.int64)
    out[np.cumsum(n_fill + 1) - 1] = rest
    return out


def gaps_to_positions(gaps: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`positions_to_gaps`."""
    filler = (1 << k) - 1
    g = np.asarray(gaps, dtype=np.int64).reshape(-1)
    is_weight = g != filler
    ends = np.cumsum(np.where(is_weight, g + 1, filler))
    return ends[is_weight] - 1
