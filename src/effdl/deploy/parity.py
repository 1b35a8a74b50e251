"""Conversion checks: does a lowered model agree with its source on real inputs?

Lossless lowerings (FP32 export/compile) must match elementwise, ``|y - x| <= atol + rtol * |x|``
(REFERENCE.md: rtol 1e-3 / atol 1e-5 across runtimes, at two batch sizes). Lossy ones (INT8) must
keep SQNR = 20 log10(||x|| / ||x - y||) >= 20 dB over all outputs and top-1 agreement >= 99%.
Every result records the observed errors and the tolerance used; a failure says which number
missed which threshold.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..core.errors import ConfigError, DataError
from .lowered import Lowered, as_logits

#: reported when the outputs are bit-identical (no error to divide by); float32 itself cannot
#: resolve more than ~150 dB, so any finite measurement is far below this
SQNR_IDENTICAL_DB = 300.0
#: batch-1 samples checked (every sample at the large batch size is checked too)
SMALL_BATCH_SAMPLES = 8


@dataclass
class ParityResult:
    ok: bool
    lossless: bool
    max_abs_err: float
    max_rel_err: float
    sqnr_db: float
    top1_agreement: float
    n_samples: int
    batch_sizes: list[int]
    tolerance: dict[str, float]
    reason: str | None = None
    cos_min: float | None = None  # embeddings: the least cosine similarity of any sample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return as_logits(fn(x)).detach().cpu()


def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    """20 log10(||x|| / ||x - y||) in dB, over all elements (float64 accumulation)."""
    x, y = reference.float(), output.float()
    noise = float(torch.linalg.vector_norm(x - y, dtype=torch.float64))
    signal = float(torch.linalg.vector_norm(x, dtype=torch.float64))
    if noise == 0.0:
        return SQNR_IDENTICAL_DB
    if signal == 0.0:
        return -SQNR_IDENTICAL_DB
    return 20.0 * math.log10(signal / noise)


def check_parity(
    reference: Callable[[torch.Tensor], Any],
    lowered: Lowered,
    inputs: list[torch.Tensor],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    min_sqnr_db: float = 20.0,
    min_top1_agreement: float = 0.99,
    min_cosine: float = 0.98,
    output_kind: str = "logits",
) -> ParityResult:
    """Compare ``lowered.predict`` with ``reference`` on every tensor of ``inputs``.

    ``reference`` is the source model (an nn.Module is evaluated in eval mode, then restored) or
    any batch -> logits callable. Which test applies is ``lowered.lossless``. ``output_kind``
    (``Task.output_kind``) says what agreement means for a lossy lowering: SQNR >= ``min_sqnr_db``
    and the same top-1 class ("logits") or the same top-1 token at every position ("token-logits");
    for embeddings, the task's own fidelity measure instead: a cosine similarity of at least
    ``min_cosine`` for every sample.
    """
    if not inputs:
        raise DataError("check_parity needs at least one input batch (use parity_inputs(task))")
    for name, v in (("rtol", rtol), ("atol", atol), ("min_top1_agreement", min_top1_agreement)):
        if not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"check_parity: {name} must be a number >= 0, got {v!r}")
    module = reference if isinstance(reference, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        refs = [_run(reference, x) for x in inputs]
    finally:
        if module is not None and was_training:
            module.train()
    outs = [_run(lowered.predict, x) for x in inputs]
    tolerance = {"rtol": rtol, "atol": atol, "min_sqnr_db": min_sqnr_db, "min_top1_agreement": min_top1_agreement}
    if output_kind == "embedding":
        tolerance["min_cosine"] = min_cosine
    batch_sizes = sorted({int(x.shape[0]) for x in inputs})
    n = sum(int(x.shape[0]) for x in inputs)

    def result(ok, reason, **m) -> ParityResult:
        base = dict(max_abs_err=math.inf, max_rel_err=math.inf, sqnr_db=-SQNR_IDENTICAL_DB, top1_agreement=0.0)
        base.update(m)
        return ParityResult(ok, lowered.lossless, n_samples=n, batch_sizes=batch_sizes, tolerance=tolerance,
                            reason=reason, **base)

    for x, r, o in zip(inputs, refs, outs):
        if o.shape != r.shape:
            return result(False, f"{lowered.runtime}: output shape {tuple(o.shape)} differs from the "
                                 f"source's {tuple(r.shape)} for input {tuple(x.shape)}")
    # rows of the last axis: a class-logit or embedding row per sample, a vocabulary row per token, so
    # outputs of two sequence lengths stack
    ref, out = torch.cat([r.reshape(-1, r.shape[-1]) for r in refs]), torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        return result(False, f"{lowered.runtime}: {bad} of {out.numel()} outputs are NaN/Inf")
    # float32 is exact enough for elementwise tolerances (a difference of two float32 values), and a
    # language model's outputs are large ([tokens, vocabulary]): double copies would dominate the check
    diff = (out - ref).abs()
    mag = ref.abs()
    max_abs = float(diff.max())
    big = mag > atol  # relative error is meaningless where the reference is ~0
    max_rel = float((diff[big] / mag[big]).max()) if bool(big.any()) else 0.0
    snr = sqnr_db(ref, out)
    cos_min = None
    if output_kind == "embedding":
        cos_min = float(torch.nn.functional.cosine_similarity(out.double(), ref.double(), dim=1).min())
        agree = 1.0
    elif output_kind == "token-logits":  # one distribution per position: compare along the vocabulary
        agree = float((out.argmax(1) == ref.argmax(1)).double().mean())
    else:
        agree = float((out.argmax(1) == ref.argmax(1)).double().mean()) if ref.shape[1] > 1 else 1.0
    metrics = dict(max_abs_err=max_abs, max_rel_err=max_rel, sqnr_db=snr, top1_agreement=agree, cos_min=cos_min)
    reasons = []
    if lowered.lossless:
        excess = diff - (atol + rtol * mag)
        n_bad = int((excess > 0).sum())
        if n_bad:
            i = int(excess.argmax())
            reasons.append(
                f"{n_bad} of {diff.numel()} outputs differ by more than atol + rtol*|x| "
                f"(atol={atol:g}, rtol={rtol:g}): worst |y - x| = {float(diff.flatten()[i]):.3g} "
                f"where {atol + rtol * float(mag.flatten()[i]):.3g} is allowed; max |y - x| = {max_abs:.3g}"
            )
    else:
        # embeddings are judged by the task's own fidelity measure, the cosine of every sample (an SQNR of
        # 17-19 dB is still a min cosine near 0.99); the SQNR is recorded either way
        if snr < min_sqnr_db and output_kind != "embedding":
            reasons.append(f"SQNR {snr:.2f} dB is below the required {min_sqnr_db:g} dB")
        if agree < min_top1_agreement:
            reasons.append(f"top-1 agreement {agree:.4f} is below the required {min_top1_agreement:g}")
        if cos_min is not None and cos_min < min_cosine:
            reasons.append(f"min cosine similarity {cos_min:.4f} is below the required {min_cosine:g}")
    reason = f"{lowered.runtime}: " + "; ".join(reasons) + f" (over {n} samples)" if reasons else None
    return result(not reasons, reason, **metrics)


def parity_inputs(task, batch_sizes: tuple[int, ...] = (1, 32), n: int | None = None) -> list[torch.Tensor]:
    """Real inputs for a parity check: the largest batch size covers >= ``n`` samples (default: the
    task's ``parity_samples``) in whole batches; each smaller batch size gets a few batches (8 samples
    at batch 1). Sequence inputs (a dynamic axis 1) are also checked at half their length, so an
    export that fixed the sequence length fails here."""
    n = task.parity_samples if n is None else n
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1 or n < 1:
        raise ConfigError(f"parity_inputs: batch sizes must be >= 1 and n >= 1, got {batch_sizes!r}, n={n}")
    big = sizes[-1]
    n_big = math.ceil(n / big) * big
    pool = task.inputs(n_big)
    inputs: list[torch.Tensor] = []
    for b in sizes[:-1]:
        count = max(1, math.ceil(min(SMALL_BATCH_SAMPLES, n) / b)) * b
        inputs += list(pool[:count].split(b))
    inputs += list(pool.split(big))
    if 1 in task.dynamic_axes and pool.dim() > 1 and pool.shape[1] >= 4:
        inputs.append(pool[: sizes[0], : pool.shape[1] // 2])
    return [x.contiguous() for x in inputs]
