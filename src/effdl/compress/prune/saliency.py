"""Weight saliencies: how much each weight matters, as a score tensor shaped like the weight.

Every saliency is a function ``(model, names, *, batches, loss_fn, seed, ...) -> {name: scores}``;
a low score means "remove first". Weight-only saliencies ignore the data:

- ``l1``: |w| (magnitude; Han et al. 2015). Groups (blocks, N:M groups) sum it: L1 = sum |w|.
- ``l2``: w^2 per weight (same ranking as l1 for single weights); groups reduce it to
  sqrt(sum w^2), the group's L2 norm (see ``REDUCE``).
- ``random``: uniform scores from a seeded generator, the control every saliency must beat.

Data saliencies use real training batches of the Task (``task_batches``):

- ``taylor``: first-order Taylor |g * w| averaged over batches (Molchanov et al. 2017): the loss
  change predicted by removing w.
- ``obd``: Optimal Brain Damage (LeCun et al. 1990), s = 0.5 * H_ii * w^2 with the diagonal of the
  training loss' Hessian: ``exact`` by double backprop (one Hessian-vector product with a unit
  vector per weight, so only for small layers), ``fisher`` (mean squared per-sample gradient, the
  Gauss-Newton estimate), or ``hutchinson`` (E[z * Hz] with Rademacher z, Bekas et al. 2007).
  ``auto`` is exact on layers with at most ``AUTO_EXACT`` weights and Fisher above: one
  double-backward pass costs about a full backward pass through the network per weight (measured
  ~0.5 s each for LeNet-5's first conv at batch 32 on the busy 2-core CPU), so exact is for tiny
  layers; ``exact`` is refused above ``EXACT_LIMIT``.

Models are scored in eval mode (dropout off, batch norm on running statistics) and left as found.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import ConfigError, suggest

Scores = dict[str, torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EXACT_LIMIT = 1024  # most weights per layer for which the exact diagonal (one HVP per weight) is allowed
AUTO_EXACT = 128  # most weights per layer for which obd_method="auto" picks the exact diagonal


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def task_batches(task, n: int, batch_size: int = 64) -> Batches:
    """``n`` real (x, y) batches of the Task's train split in a fixed order (never the test split)."""
    if n < 1:
        raise ConfigError(f"a data saliency needs at least 1 batch, got {n}")
    out = []
    for x, y in task.batches("train", batch_size, shuffle=True):
        out.append((x, y))
        if len(out) == n:
            break
    return out


def _weights(model: nn.Module, names) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight for n in names}


@contextmanager
def _eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _need_batches(name: str, batches) -> Batches:
    if not batches:
        raise ConfigError(f"saliency {name!r} needs training data: pass a Task (task=...) or batches=[(x, y), ...]")
    return batches


def _leaves(model: nn.Module, names) -> list[torch.Tensor]:
    ws = list(_weights(model, names).values())
    for n, w in zip(names, ws):
        if not isinstance(w, nn.Parameter):
            raise ConfigError(f"layer {n!r}: data saliencies need plain weights; fold its parametrizations first")
    return ws


# -- weight-only ---------------------------------------------------------------------------------
@torch.no_grad()
def l1(model: nn.Module, names, **_) -> Scores:
    return {n: w.detach().abs() for n, w in _weights(model, names).items()}


@torch.no_grad()
def l2(model: nn.Module, names, **_) -> Scores:
    return {n: w.detach().square() for n, w in _weights(model, names).items()}


@torch.no_grad()
def random(model: nn.Module, names, *, seed: int = 0, **_) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) for n, w in _weights(model, names).items()}


# -- data saliencies -----------------------------------------------------------------------------
def taylor(model: nn.Module, names, *, batches: Batches | None = None, loss_fn: LossFn = cross_entropy, **_) -> Scores:
    batches = _need_batches("taylor", batches)
    ws = _leaves(model, names)
    acc = [torch.zeros_like(w) for w in ws]
    with _eval(model):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model, x, y), ws)
            for a, g, w in zip(acc, grads, ws):
                a += (g * w).detach().abs()
    return {n: a / len(batches) for n, a in zip(names, acc)}


def hessian_diag_exact(model, names, batches: Batches, loss_fn: LossFn = cross_entropy) -> Scores:
    """Exact diag(H) of the mean batch loss: d/dw_i of (dL/dw)_i, one backward pass per weight."""
    ws = _leaves(model, names)
    for n, w in zip(names, ws):
        if w.numel() > EXACT_LIMIT:
            raise ConfigError(
                f"layer {n!r} has {w.numel()} weights: the exact Hessian diagonal is limited to {EXACT_LIMIT} "
                "(one backward pass per weight); use obd_method='fisher' or 'hutchinson' (or 'auto')"
            )
    acc = [torch.zeros_like(w) for w in ws]
    with _eval(model):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model, x, y), ws, create_graph=True)
            for a, g, w in zip(acc, grads, ws):
                flat = g.reshape(-1)
                for i in range(flat.numel()):
                    if not flat.requires_grad:  # loss linear in w: zero curvature
                        break
                    (h,) = torch.autograd.grad(flat[i], w, retain_graph=True, allow_unused=True)
                    if h is not None:
                        a.view(-1)[i] += h.reshape(-1)[i].detach()
    return {n: a / len(batches) for n, a in zip(names, acc)}


def hessian_diag_fisher(model, names, batches: Batches, loss_fn: LossFn = cross_entropy) -> Scores:
    """Empirical Fisher: mean over samples of the squared per-sample gradient."""
    ws = _leaves(model, names)
    acc = [torch.zeros_like(w) for w in ws]
    count = 0
    with _eval(model):
        for x, y in batches:
            for i in range(x.shape[0]):
                grads = torch.autograd.grad(loss_fn(model, x[i : i + 1], y[i : i + 1]), ws)
                for a, g in zip(acc, grads):
                    a += g.detach().square()
                count += 1
    return {n: a / count for n, a in zip(names, acc)}


def hessian_diag_hutchinson(
    model, names, batches: Batches, loss_fn: LossFn = cross_entropy, *, probes: int = 16, seed: int = 0
) -> Scores:
    """Hutchinson: E_z[z * (H z)] over Rademacher z, ``probes`` per batch (unbiased for diag(H))."""
    ws = _leaves(model, names)
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(w) for w in ws]
    with _eval(model):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model, x, y), ws, create_graph=True)
            for _ in range(probes):
                zs = [torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for w in ws]
                hz = torch.autograd.grad(grads, ws, grad_outputs=zs, retain_graph=True, allow_unused=True)
                for a, z, h in zip(acc, zs, hz):
                    if h is not None:
                        a += (z * h).detach()
    return {n: a / (len(batches) * probes) for n, a in zip(names, acc)}


OBD_METHODS = ("auto", "exact", "fisher", "hutchinson")


def obd(
    model: nn.Module, names, *, batches: Batches | None = None, loss_fn: LossFn = cross_entropy,
    method: str = "auto", seed: int = 0, probes: int = 16, **_,
) -> Scores:
    batches = _need_batches("obd", batches)
    if method not in OBD_METHODS:
        raise ConfigError(f"obd method must be one of {OBD_METHODS}, got {method!r}.{suggest(method, OBD_METHODS)}")
    ws = _weights(model, names)
    if method == "auto":
        small = [n for n in names if ws[n].numel() <= AUTO_EXACT]
        big = [n for n in names if n not in small]
        h = hessian_diag_exact(model, small, batches, loss_fn) if small else {}
        if big:
            h.update(hessian_diag_fisher(model, big, batches, loss_fn))
    elif method == "exact":
        h = hessian_diag_exact(model, names, batches, loss_fn)
    elif method == "fisher":
        h = hessian_diag_fisher(model, names, batches, loss_fn)
    else:
        h = hessian_diag_hutchinson(model, names, batches, loss_fn, probes=probes, seed=seed)
    # A negative curvature estimate (Hutchinson noise, non-convex spots) would rank a weight below
    # zero-cost ones; clamp to 0 so such weights count as free to remove, as OBD assumes H >= 0.
    return {n: 0.5 * h[n].clamp_min(0) * ws[n].detach().square() for n in names}


# name -> (function, needs data, how a group of per-weight scores becomes one score)
SALIENCIES: dict[str, tuple[Callable[..., Scores], bool, str]] = {
    "l1": (l1, False, "sum"),
    "l2": (l2, False, "sqrt_sum"),
    "random": (random, False, "sum"),
    "taylor": (taylor, True, "sum"),
    "obd": (obd, True, "sum"),
}


def check_saliency(name: str) -> None:
    if name not in SALIENCIES:
        raise ConfigError(f"unknown saliency {name!r}: use one of {sorted(SALIENCIES)}.{suggest(name, SALIENCIES)}")


def needs_data(name: str) -> bool:
    check_saliency(name)
    return SALIENCIES[name][1]


def group_reduce(name: str) -> str:
    check_saliency(name)
    return SALIENCIES[name][2]


def compute(model: nn.Module, names, saliency: str, *, task=None, batches: Batches | None = None,
            n_batches: int = 4, loss_fn: LossFn | None = None, seed: int = 0, obd_method: str = "auto") -> Scores:
    """Scores of ``saliency`` for the layers ``names`` (batches drawn from ``task`` when needed; the
    loss is the task's own unless ``loss_fn`` is given, cross-entropy without a task)."""
    check_saliency(saliency)
    fn, data, _ = SALIENCIES[saliency]
    if data and batches is None and task is not None:
        batches = task_batches(task, n_batches)
    if loss_fn is None:
        loss_fn = task.loss if task is not None else cross_entropy
    return fn(model, list(names), batches=batches, loss_fn=loss_fn, seed=seed, method=obd_method)
