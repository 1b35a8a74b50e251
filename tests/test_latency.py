"""Latency and peak-memory measurement: counts, ordering and pinning (never timing thresholds)."""
import pytest
import torch

from effdl.core.errors import ConfigError
from effdl.metrics.latency import measure_latency, peak_memory, pinned_threads, timing_environment_warnings


def test_latency_statistics_are_consistent():
    model = torch.nn.Linear(64, 32).eval()
    x = torch.randn(8, 64)
    with torch.inference_mode():
        r = measure_latency(model, x, warmup=2, repeats=20, min_time_s=0.0)
    assert r["n"] >= 20
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"]
    assert r["batch_size"] == 8
    assert r["throughput_per_s"] == pytest.approx(8 / (r["p50_ms"] / 1e3))


def test_min_time_extends_the_count_up_to_the_cap():
    calls = []
    r = measure_latency(calls.append, torch.zeros(3), warmup=1, repeats=5, min_time_s=10.0, max_repeats=40)
    assert r["n"] == 40 and len(calls) == 41  # 1 warm-up + capped timed calls


def test_threads_pinned_then_restored():
    before = torch.get_num_threads()
    seen = []
    r = measure_latency(lambda x: seen.append(torch.get_num_threads()), torch.zeros(1), warmup=0, repeats=3, threads=1)
    assert r["threads"] == 1 and set(seen) == {1}
    assert torch.get_num_threads() == before

    def boom(x):
        raise RuntimeError("fails on purpose")

    with pytest.raises(RuntimeError):
        measure_latency(boom, torch.zeros(1), threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError):
        with pinned_threads(0):
            pass


def test_bad_settings():
    for kwargs in ({"repeats": 0}, {"warmup": -1}, {"min_time_s": -1.0}, {"repeats": 10, "max_repeats": 5}):
        with pytest.raises(ConfigError):
            measure_latency(lambda x: x, torch.zeros(1), **kwargs)


def test_peak_memory_sees_a_large_temporary():
    size = 96 << 20  # above glibc's largest mmap threshold: fresh pages, so RSS must grow

    def allocate(_):
        t = torch.ones(size // 4)
        return float(t[-1])

    r = peak_memory(allocate, None, runs=2)
    assert r["method"].startswith("rss-sampled")
    assert r["peak_bytes"] >= 0.9 * size
    assert r["peak_rss_bytes"] == r["start_rss_bytes"] + r["peak_bytes"]


def test_timing_environment_warnings(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    w = timing_environment_warnings()
    assert any("MALLOC_MMAP_THRESHOLD_=33554432" in s for s in w)
    assert not any("MALLOC_TRIM_THRESHOLD_=" in s for s in w)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    assert not any("malloc" in s for s in timing_environment_warnings())
