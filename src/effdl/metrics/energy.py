"""Energy per inference, *estimated* from operation counts and per-operation energies.

Per-operation energies at 45 nm, 0.9 V are from M. Horowitz, "Computing's energy problem (and
what we can do about it)", ISSCC 2014. Absolute numbers on a modern CPU differ (smaller node,
but also instruction overheads the table leaves out); the estimate is for *comparing* candidates:
fewer MACs, narrower arithmetic and weights that fit on chip all show up in it.
"""
from __future__ import annotations

import math

from effdl.core.errors import ConfigError, suggest

# picojoules per operation (Horowitz 2014, 45 nm)
ENERGY_PJ: dict[str, float] = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "int32_add": 0.1,
    "int32_mult": 3.1,
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "sram_read_64b": 10.0,  # 8 KB SRAM, one 64-bit read
    # DRAM 64-bit read: the paper gives a range of 1.3-2.6 nJ; we use the midpoint.
    "dram_read_64b": (1300.0 + 2600.0) / 2,
}

# (multiply, accumulate-add, elementwise-add) keys per precision. INT8 products are accumulated
# in INT32. The table has no bfloat16 row: bf16 uses the fp16 figures (same 16-bit width).
_PRECISION_OPS: dict[str, tuple[str, str, str]] = {
    "fp32": ("fp32_mult", "fp32_add", "fp32_add"),
    "fp16": ("fp16_mult", "fp16_add", "fp16_add"),
    "bf16": ("fp16_mult", "fp16_add", "fp16_add"),
    "int8": ("int8_mult", "int32_add", "int8_add"),
}

DEFAULT_CACHE_BYTES = 1 << 20  # weights up to 1 MiB are assumed to stay in on-chip SRAM


def estimate_energy(
    macs: float,
    *,
    precision: str = "fp32",
    weight_bytes: int,
    elementwise_ops: float = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> dict:
    """Estimated energy of one inference (one sample if the counts are per sample).

    * compute: ``macs * (mult + add)`` at ``precision`` (INT8: int8 multiply + int32 accumulate);
    * elementwise: ``elementwise_ops`` at the precision's add cost (int8 add for INT8);
    * weight memory: every weight read once per inference, in 64-bit words
      (``ceil(weight_bytes / 8)``), at SRAM cost if ``weight_bytes <= cache_bytes``, else DRAM.

    Activation traffic and instruction overheads are left out. Returns the components in pJ,
    ``total_pj`` and ``total_uj``, the per-op figures used and ``method``.
    """
    if precision not in _PRECISION_OPS:
        raise ConfigError(
            f"energy precision {precision!r} is not one of {sorted(_PRECISION_OPS)}.{suggest(precision, _PRECISION_OPS)}"
        )
    for name, value in (("macs", macs), ("weight_bytes", weight_bytes), ("elementwise_ops", elementwise_ops),
                        ("cache_bytes", cache_bytes)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"estimate_energy: {name} must be a finite number >= 0, got {value!r}")
    mult, acc, add = _PRECISION_OPS[precision]
    level = "sram" if weight_bytes <= cache_bytes else "dram"
    read_key = "sram_read_64b" if level == "sram" else "dram_read_64b"
    words = math.ceil(weight_bytes / 8)
    compute = macs * (ENERGY_PJ[mult] + ENERGY_PJ[acc])
    elementwise = elementwise_ops * ENERGY_PJ[add]
    memory = words * ENERGY_PJ[read_key]
    total = compute + elementwise + memory
    return {
        "method": "estimate from op counts (Horowitz ISSCC 2014, 45 nm per-op energies)",
        "precision": precision,
        "compute_pj": compute,
        "elementwise_pj": elementwise,
        "weight_memory_pj": memory,
        "weight_memory_level": level,
        "weight_words_64b": words,
        "cache_bytes": cache_bytes,
        "per_op_pj": {"mult": ENERGY_PJ[mult], "accumulate": ENERGY_PJ[acc], "elementwise": ENERGY_PJ[add],
                      "weight_read_64b": ENERGY_PJ[read_key]},
        "total_pj": total,
        "total_uj": total / 1e6,
    }
