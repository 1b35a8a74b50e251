"""Canonical Huffman coding and relative indices: hand-computed codes, exact round trips, edge cases."""
import numpy as np
import pytest

from effdl.compress.share import huffman as hf
from effdl.core.errors import ArtifactError, ConfigError

# CLRS (Cormen et al., 3rd ed., Fig. 16.5): a:45 b:13 c:12 d:16 e:9 f:5 (thousands of characters)
CLRS = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}


def test_textbook_code_lengths_and_total():
    lengths = hf.code_lengths(CLRS)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert hf.encoded_bits(CLRS, lengths) == 224  # the book's 224,000 bits


def test_canonical_codes_from_lengths():
    codes = hf.canonical_codes(hf.code_lengths(CLRS))
    assert codes == {0: "0", 1: "100", 2: "101", 3: "110", 4: "1110", 5: "1111"}


def test_encode_bits_by_hand():
    # a b f a -> 0 100 1111 0 -> 01001111 0(0000000)
    data, lengths = hf.encode([0, 1, 5, 0] + [0] * 43 + [1] * 12 + [2] * 12 + [3] * 16 + [4] * 9 + [5] * 4)
    assert lengths == hf.code_lengths(CLRS)
    assert data[0] == 0b01001111 and (data[1] >> 7) == 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alphabet", [2, 17, 256, 70000])
def test_round_trip_random_streams(seed, alphabet):
    rng = np.random.default_rng(seed)
    # skewed (geometric-like) and uniform streams of random lengths
    n = int(rng.integers(1, 3000))
    stream = np.minimum(rng.geometric(0.3, n) - 1, alphabet - 1) if seed % 2 else rng.integers(0, alphabet, n)
    data, lengths = hf.encode(stream)
    assert len(data) == (hf.encoded_bits(dict(zip(*np.unique(stream, return_counts=True))), lengths) + 7) // 8
    table = hf.pack_table(lengths)
    back, end = hf.unpack_table(table)
    assert back == lengths and end == len(table)
    assert hf.decode(data, back, n) == stream.tolist()


def test_empty_and_one_symbol_streams():
    data, lengths = hf.encode([])
    assert data == b"" and lengths == {}
    assert hf.decode(b"", {}, 0) == []
    assert hf.unpack_table(hf.pack_table({}))[0] == {}
    data, lengths = hf.encode([7] * 10)
    assert lengths == {7: 1} and len(data) == 2  # one bit per symbol
    assert hf.decode(data, lengths, 10) == [7] * 10


def test_truncated_or_invalid_stream_is_an_artifact_error():
    data, lengths = hf.encode([0, 1, 2, 3, 4, 5] * 10)
    with pytest.raises(ArtifactError, match="corrupt"):
        hf.decode(data[:2], lengths, 60)
    with pytest.raises(ArtifactError, match="corrupt"):
        hf.decode(b"\xff", {7: 1}, 1)  # '1' is not a code of a one-symbol table
    with pytest.raises(ArtifactError, match="corrupt"):
        hf.unpack_table(b"\x05\x01\x00")


def test_negative_symbols_refused():
    with pytest.raises(ConfigError, match="non-negative"):
        hf.encode([1, -2])


def test_relative_index_by_hand():
    # non-zeros at 0, 1, 9, 19 of a length-20 vector, 2-bit gaps (filler F = 3 skips 3 zeros)
    gaps = hf.positions_to_gaps(np.array([0, 1, 9, 19]), 2)
    assert gaps.tolist() == [0, 0, 3, 3, 1, 3, 3, 3, 0]
    assert hf.gaps_to_positions(gaps, 2).tolist() == [0, 1, 9, 19]


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_relative_index_round_trip(k):
    rng = np.random.default_rng(k)
    pos = np.flatnonzero(rng.random(5000) < 0.05)
    gaps = hf.positions_to_gaps(pos, k)
    assert gaps.max() <= (1 << k) - 1
    assert np.array_equal(hf.gaps_to_positions(gaps, k), pos)
    assert hf.positions_to_gaps(np.array([], dtype=np.int64), k).size == 0


def test_relative_index_bad_input():
    with pytest.raises(ConfigError, match="1..16"):
        hf.positions_to_gaps(np.array([1]), 0)
    with pytest.raises(ConfigError, match="strictly increasing"):
        hf.positions_to_gaps(np.array([3, 3]), 4)
