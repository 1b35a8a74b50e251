"""The environment record: every key present, with plausible values."""
import datetime as dt
import os

import torch

from effdl.metrics.env import ISA_FLAGS, cpu_info, environment


def test_environment_keys_and_values(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    e = environment(runtime="onnxruntime", threads=1)
    for key in ("cpu_model", "logical_cores", "isa", "threads", "versions", "os", "kernel",
                "malloc_env", "thread_env", "timestamp", "runtime"):
        assert key in e, key
    assert e["runtime"] == "onnxruntime" and e["threads"] == 1
    assert e["logical_cores"] == os.cpu_count()
    assert set(e["isa"]) == set(ISA_FLAGS) and all(isinstance(v, bool) for v in e["isa"].values())
    assert e["versions"]["torch"] == torch.__version__
    assert {"python", "torchao", "onnx", "onnxruntime", "onnxscript", "numpy", "optuna", "effdl"} <= set(e["versions"])
    assert e["malloc_env"]["MALLOC_TRIM_THRESHOLD_"] == "1073741824"
    assert e["thread_env"]["OMP_NUM_THREADS"] == "2"
    stamp = dt.datetime.fromisoformat(e["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert isinstance(e["cpu_model"], str) and e["cpu_model"]


def test_default_threads_and_cached_cpu_lookup():
    assert environment()["threads"] == torch.get_num_threads()
    hits = cpu_info.cache_info().hits
    environment()
    assert cpu_info.cache_info().hits == hits + 1
    assert cpu_info.cache_info().currsize == 1


def test_isa_matches_kernel_flags():
    # The cross-check source: the kernel's own flag list (Linux). py-cpuinfo must agree on these.
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return
    isa = cpu_info()["isa"]
    for flag in ISA_FLAGS:
        assert isa[flag] == (flag in flags), flag
