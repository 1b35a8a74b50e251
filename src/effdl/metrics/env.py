"""The environment a measurement was taken on: CPU, ISA, threads, library versions, allocator."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import sys
from importlib import metadata

import torch

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
PACKAGES = ("torch", "torchao", "onnx", "onnxruntime", "onnxscript", "numpy", "optuna", "effdl")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS", "KMP_AFFINITY", "OMP_PROC_BIND")


def _proc_cpuinfo() -> tuple[str | None, set[str]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model and ISA flags; looked up once per process (py-cpuinfo takes about a second)."""
    model, flags, source = None, set(), None
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        model, flags, source = info.get("brand_raw"), set(info.get("flags", [])), "py-cpuinfo"
    except Exception:  # py-cpuinfo missing or failing on this platform: fall back to the kernel
        pass
    if not model or not flags:
        proc_model, proc_flags = _proc_cpuinfo()
        model, flags = model or proc_model, flags or proc_flags
        source = source or ("/proc/cpuinfo" if proc_model or proc_flags else None)
    # flag spellings differ (avx512_vnni vs avx512vnni): compare without underscores
    plain = {f.replace("_", "") for f in flags}
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "isa": {f: f.replace("_", "") in plain for f in ISA_FLAGS},
        "source": source,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(runtime: str | None = None, threads: int | None = None) -> dict:
    """A JSON-able record of where and how a measurement ran.

    ``threads`` is the thread count the measurement pinned; when not given, torch's current count.
    """
    import psutil

    cpu = cpu_info()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    versions = {"python": platform.python_version()}
    versions.update({p: _version(p) for p in PACKAGES})
    versions["torch"] = torch.__version__
    uname = platform.uname()
    return {
        "runtime": runtime,
        "cpu_model": cpu["cpu_model"],
        "logical_cores": psutil.cpu_count(logical=True) or os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "isa": cpu["isa"],
        "torch_cpu_capability": capability,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "os": _os_name(uname.system),
        "kernel": uname.release,
        "machine": uname.machine,
        "python_implementation": sys.implementation.name,
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _os_name(system: str) -> str:
    """``Linux (Ubuntu 24.04.1 LTS)`` where the distribution says, else just the system."""
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, AttributeError):
        pretty = None
    return f"{system} ({pretty})" if pretty else system
