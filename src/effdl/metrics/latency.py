"""Wall-clock latency and peak memory of a callable, measured honestly.

Latency: warm-up calls, then each call timed with ``perf_counter_ns`` until both a minimum count
and a minimum time are reached; the median is the headline, threads are pinned and reported.
The conditions that distort timings on this kind of machine (REFERENCE.md: glibc malloc
thresholds, foreign load on the other core) are *recorded* by
:func:`timing_environment_warnings`, never silently fixed.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from effdl.core.errors import ConfigError

# REFERENCE.md: with these glibc settings identical eager runs went from 18-29 ms to 15-16 ms.
STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def reexec_with_steady_malloc(argv: list[str]) -> None:
    """Re-run this process as ``argv`` with STEADY_MALLOC_ENV set, unless it already is.

    glibc reads these only at start-up, so setting them from Python is too late. Without them
    identical eager runs varied 18-29 ms here and speed-ups looked 1.4-2x too big (REFERENCE.md).
    EFFDL_NO_REEXEC=1 turns this off (tests, embedding).
    """
    if all(os.environ.get(k) for k in STEADY_MALLOC_ENV) or os.environ.get("EFFDL_NO_REEXEC"):
        return
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **STEADY_MALLOC_ENV})


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() > 0 else 1
    if isinstance(inputs, (list, tuple)) and inputs:
        return _batch_size(inputs[0])
    if isinstance(inputs, dict) and inputs:
        return _batch_size(next(iter(inputs.values())))
    return 1


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block (if given) and restore it afterwards."""
    if threads is not None:
        _check_int("threads", threads, 1)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def measure_latency(
    fn: Callable[[Any], Any],
    inputs: torch.Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.2,
    threads: int | None = None,
    max_repeats: int = 2000,
) -> dict:
    """Time ``fn(inputs)``: ``warmup`` untimed calls, then timed calls until at least ``repeats``
    calls *and* ``min_time_s`` seconds (at most ``max_repeats`` calls).

    Returns p50/p90/mean/min in ms, the number of timed calls ``n``, ``batch_size`` (first dim of
    ``inputs``), ``throughput_per_s`` (samples/s at the median) and ``threads`` in use.
    """
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
    _check_int("max_repeats", max_repeats, repeats)
    if not isinstance(min_time_s, (int, float)) or min_time_s < 0:
        raise ConfigError(f"min_time_s must be a number >= 0, got {min_time_s!r}")
    with pinned_threads(threads) as used_threads:
        for _ in range(warmup):
            fn(inputs)
        times_ns: list[int] = []
        # The collector would otherwise fire inside some timed calls and not others (as timeit does).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            limit_ns = int(min_time_s * 1e9)
            while len(times_ns) < max_repeats and (
                len(times_ns) < repeats or time.perf_counter_ns() - start < limit_ns
            ):
                t0 = time.perf_counter_ns()
                fn(inputs)
                times_ns.append(time.perf_counter_ns() - t0)
        finally:
            if gc_was_enabled:
                gc.enable()
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50 = float(np.percentile(ms, 50))
    batch = _batch_size(inputs)
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "n": int(ms.size),
        "warmup": warmup,
        "batch_size": batch,
        "throughput_per_s": batch / (p50 / 1e3) if p50 > 0 else float("inf"),
        "threads": used_threads,
        "method": "perf_counter_ns per call after warm-up; median of calls",
    }


def _rss_reader() -> Callable[[], int]:
    import psutil

    proc = psutil.Process()
    return lambda: proc.memory_info().rss


def _reset_vmhwm() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vmhwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[Any], Any], inputs: Any, *, interval_s: float = 0.001, runs: int = 3) -> dict:
    """Peak resident memory while running ``fn(inputs)`` ``runs`` times.

    A background thread samples RSS every ``interval_s``; on Linux the kernel's high-water mark
    (reset first) is read too, so short spikes between samples are not missed. ``peak_bytes`` is
    the peak above the RSS at the start (what running the model adds), ``peak_rss_bytes`` the
    absolute peak. Process-wide: other threads' allocations count too.
    """
    _check_int("runs", runs, 1)
    if not isinstance(interval_s, (int, float)) or interval_s <= 0:
        raise ConfigError(f"interval_s must be a number > 0, got {interval_s!r}")
    _rss = _rss_reader()
    gc.collect()
    start = _rss()
    hwm = _reset_vmhwm()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, name="effdl-rss-sampler", daemon=True)
    sampler.start()
    try:
        for _ in range(runs):
            fn(inputs)
            peak[0] = max(peak[0], _rss())
    finally:
        stop.set()
        sampler.join()
    sampled = peak[0]
    kernel = _vmhwm() if hwm else None
    top = max(sampled, kernel or 0)
    return {
        "method": "rss-sampled" + ("+vmhwm" if kernel is not None else ""),
        "peak_bytes": top - start,
        "peak_rss_bytes": top,
        "start_rss_bytes": start,
        "sampled_peak_rss_bytes": sampled,
        "vmhwm_bytes": kernel,
        "interval_s": interval_s,
        "runs": runs,
    }


def timing_environment_warnings() -> list[str]:
    """Conditions that make timings on this machine unsteady, as sentences (empty if none seen)."""
    warnings = []
    if platform.libc_ver()[0] == "glibc":
        missing = [k for k, v in STEADY_MALLOC_ENV.items() if os.environ.get(k) is None]
        if missing:
            wanted = " ".join(f"{k}={STEADY_MALLOC_ENV[k]}" for k in missing)
            warnings.append(
                f"glibc malloc thresholds not set ({', '.join(missing)}): eager timings can vary ~1.5x "
                f"run to run; start the process with {wanted}"
            )
    try:
        import psutil

        cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        load1 = psutil.getloadavg()[0]
        if load1 / cores > 0.5:
            warnings.append(
                f"other processes are using the CPU (1-min load average {load1:.2f} on {cores} cores): "
                "timings will be slower and noisier than on an idle machine"
            )
    except (ImportError, OSError, AttributeError):
        pass
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if threads > cores:
        warnings.append(f"torch uses {threads} threads on {cores} logical cores: oversubscribed; pin threads <= cores")
    return warnings
