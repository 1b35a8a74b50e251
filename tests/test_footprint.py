"""Parameter counts, non-zeros and byte sizes, against hand counts."""
import gzip
import struct

import pytest
import torch
from safetensors.torch import save
from torch import nn

from effdl.core.errors import ArtifactError
from effdl.metrics.footprint import count_nonzero, count_params, dense_fp32_bytes, file_size, gzip_size


def _data_bytes(blob: bytes) -> int:
    """Bytes of tensor data in a safetensors blob: total - 8-byte length - JSON header."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - header_len


def test_lenet_300_100_params():
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    assert count_params(m) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    with torch.no_grad():
        m[1].weight[:150] = 0  # 150 rows of 784
    assert count_nonzero(m) == 266_610 - 150 * 784


def test_tied_weights_counted_once():
    emb = nn.Embedding(50, 8)
    head = nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    assert count_params(nn.Sequential(emb, head)) == 400
    # a tie made by sharing .data between two Parameter objects is still one tensor
    a = nn.Linear(4, 4, bias=False)
    b = nn.Linear(4, 4, bias=False)
    b.weight = nn.Parameter(a.weight.data)
    assert count_params(nn.Sequential(a, b)) == 16
    assert count_nonzero(nn.Sequential(a, b)) == int(torch.count_nonzero(a.weight))


def test_buffers_count_as_bytes_not_params():
    bn = nn.BatchNorm1d(4)
    assert count_params(bn) == 8
    blob_size = dense_fp32_bytes(bn)
    expected = save({k: v.clone() for k, v in bn.state_dict().items()})
    assert blob_size == len(expected)
    # weight, bias, running_mean, running_var: 4 x 4 floats; num_batches_tracked: one int64
    assert _data_bytes(expected) == 4 * 4 * 4 + 8


def test_dense_fp32_bytes_casts_half_models_and_stores_ties_once():
    m = nn.Linear(10, 10).half()
    assert dense_fp32_bytes(m) == dense_fp32_bytes(nn.Linear(10, 10))
    emb = nn.Embedding(50, 8)
    head = nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    tied = dense_fp32_bytes(nn.Sequential(emb, head))
    assert tied - dense_fp32_bytes(nn.Sequential(emb)) < 8 * 50 * 4  # not a second copy


def test_file_and_gzip_sizes(tmp_path):
    data = bytes(10_000) + bytes(range(256)) * 4
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_size(path) == len(data)
    expected = len(gzip.compress(data, compresslevel=9, mtime=0))
    assert gzip_size(path) == gzip_size(data) == expected
    assert gzip_size(data) < len(data) / 5  # mostly zeros
    with pytest.raises(ArtifactError, match="does not exist"):
        file_size(tmp_path / "nope")
    with pytest.raises(ArtifactError):
        gzip_size(tmp_path / "nope")
