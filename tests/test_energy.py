"""Energy estimate from op counts, against hand-computed Horowitz (ISSCC 2014) figures."""
import pytest

from effdl.core.errors import ConfigError
from effdl.metrics.energy import ENERGY_PJ, estimate_energy


def test_table_values():
    assert ENERGY_PJ["fp32_add"] == 0.9 and ENERGY_PJ["fp32_mult"] == 3.7
    assert ENERGY_PJ["int8_add"] == 0.03 and ENERGY_PJ["int8_mult"] == 0.2
    assert ENERGY_PJ["dram_read_64b"] == 1950.0  # midpoint of 1.3-2.6 nJ


def test_fp32_small_model_in_sram():
    # 1,000 MACs * (3.7 + 0.9) + 100 adds * 0.9 + 4,000 B / 8 = 500 words * 10 pJ
    r = estimate_energy(1000, precision="fp32", weight_bytes=4000, elementwise_ops=100)
    assert r["compute_pj"] == pytest.approx(4600)
    assert r["elementwise_pj"] == pytest.approx(90)
    assert r["weight_memory_pj"] == pytest.approx(5000) and r["weight_memory_level"] == "sram"
    assert r["total_pj"] == pytest.approx(9690)
    assert r["total_uj"] == pytest.approx(0.00969)
    assert "estimate" in r["method"]


def test_int8_accumulates_in_int32():
    # 1,000 * (0.2 int8 mult + 0.1 int32 add) + 100 * 0.03 + 1,000 B -> 125 words * 10
    r = estimate_energy(1000, precision="int8", weight_bytes=1000, elementwise_ops=100)
    assert r["total_pj"] == pytest.approx(300 + 3 + 1250)


def test_weights_over_cache_are_read_from_dram():
    r = estimate_energy(0, precision="fp32", weight_bytes=2 << 20)
    assert r["weight_memory_level"] == "dram"
    assert r["weight_memory_pj"] == pytest.approx((2 << 20) / 8 * 1950)
    # the threshold is a parameter: the same weights with a 4 MiB cache are SRAM reads
    assert estimate_energy(0, weight_bytes=2 << 20, cache_bytes=4 << 20)["weight_memory_pj"] == pytest.approx((2 << 20) / 8 * 10)


def test_bf16_uses_fp16_figures_and_partial_words_round_up():
    a = estimate_energy(10, precision="bf16", weight_bytes=9)
    b = estimate_energy(10, precision="fp16", weight_bytes=9)
    assert a["total_pj"] == b["total_pj"] == pytest.approx(10 * 1.5 + 2 * 10)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="int8"):
        estimate_energy(1, precision="int9", weight_bytes=0)
    with pytest.raises(ConfigError, match="macs"):
        estimate_energy(-1, weight_bytes=0)
    with pytest.raises(ConfigError, match="weight_bytes"):
        estimate_energy(1, weight_bytes=float("nan"))
