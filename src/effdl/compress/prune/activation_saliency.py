"""Per-output-unit saliency of Conv/Linear layers: a score per unit, higher = more important.

l1 / l2: norm of the unit's weights. random: a control. taylor: first-order Taylor expansion of
the loss, |sum over the unit's weights of g * w| with g the loss gradient accumulated over a few
real training batches (Molchanov et al. 2019). mean_activation / apoz: statistics of the unit's
activation on real batches (Hu et al. 2016, APoZ = average percentage of zeros), taken after the
layer's BatchNorm and ReLU when they directly follow it.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

SALIENCIES = ("l1", "l2", "random", "taylor", "mean_activation", "apoz")
DATA_SALIENCIES = ("taylor", "mean_activation", "apoz")
_ACTS = (nn.ReLU, nn.ReLU6)


def weight_scores(m: nn.Module, kind: str) -> torch.Tensor:
    """L1 or L2 norm of each output unit's weights (dim 0 of the weight)."""
    w = m.weight.detach().flatten(1)
    return w.abs().sum(1) if kind == "l1" else w.pow(2).sum(1).sqrt()


def random_scores(m: nn.Module, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(m.weight.shape[0], generator=generator)


def taylor_scores(model: nn.Module, modules: list[nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  loss_fn=None) -> dict[nn.Module, torch.Tensor]:
    """|sum_{weights of unit} dL/dw * w| with the gradient summed over ``batches`` of (x, y).

    The model stays in eval mode (BatchNorm statistics are not touched); its grads are restored.
    """
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y))
    was = model.training
    model.eval()
    saved = {p: p.grad for p in model.parameters()}
    grads = {m: torch.zeros_like(m.weight) for m in modules}
    try:
        with torch.enable_grad():
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                for m in modules:
                    if m.weight.grad is not None:
                        grads[m] += m.weight.grad.detach()
    finally:
        for p, g in saved.items():
            p.grad = g
        model.train(was)
    return {m: (grads[m] * m.weight.detach()).flatten(1).sum(1).abs() for m in modules}


def _follow(m_out: torch.Tensor, consumers: dict[int, tuple[nn.Module, torch.Tensor]]) -> torch.Tensor:
    """The activation after ``m_out``: through a directly following BatchNorm, then ReLU/ReLU6."""
    nxt = consumers.get(id(m_out))
    if nxt is not None and isinstance(nxt[0], nn.modules.batchnorm._BatchNorm):
        m_out = nxt[1]
        nxt = consumers.get(id(m_out))
    if nxt is not None and isinstance(nxt[0], _ACTS):
        m_out = nxt[1]
    return m_out


def activation_scores(model: nn.Module, modules: list[nn.Module], batches: Iterable[torch.Tensor],
                      kind: str) -> dict[nn.Module, torch.Tensor]:
    """mean_activation: mean |a| per unit (|.| so a unit with large negative outputs, after no
    ReLU, still counts as active); apoz: the unit's score is 1 - APoZ, where APoZ is the fraction
    of its activations that are <= 0 (exactly the zeros a ReLU makes)."""
    wanted = {id(m): m for m in modules}
    sums = {m: None for m in modules}
    counts = {m: 0 for m in modules}
    was = model.training
    model.eval()
    try:
        for x in batches:
            seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

            def hook(mod, inputs, output, seen=seen):
                if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
                    seen.append((mod, inputs[0], output))

            handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
            try:
                with torch.no_grad():
                    model(x.float())
            finally:
                for h in handles:
                    h.remove()
            # tensors stay referenced in ``seen``, so their ids are unique for this batch
            consumers = {id(inp): (mod, out) for mod, inp, out in seen if not isinstance(mod, nn.Identity)}
            for mod, _, out in seen:
                m = wanted.get(id(mod))
                if m is None:
                    continue
                a = _follow(out, consumers).detach()
                a = a.transpose(0, 1).flatten(1)  # units first: (C, N * spatial)
                stat = a.abs().sum(1) if kind == "mean_activation" else (a <= 0).float().sum(1)
                sums[m] = stat if sums[m] is None else sums[m] + stat
                counts[m] += a.shape[1]
    finally:
        model.train(was)
    out = {}
    for m in modules:
        if sums[m] is None:
            out[m] = torch.zeros(m.weight.shape[0])
            continue
        mean = sums[m] / max(counts[m], 1)
        out[m] = mean if kind == "mean_activation" else 1.0 - mean
    return out


def unit_scores(model: nn.Module, modules: list[nn.Module], saliency: str, *, train_batches=None,
                seed: int = 0, loss_fn=None) -> dict[nn.Module, torch.Tensor]:
    """Scores of every output unit of ``modules`` by ``saliency`` (see SALIENCIES); ``loss_fn(outputs,
    targets)`` is the task's loss for the taylor saliency (default cross-entropy)."""
    if saliency in ("l1", "l2"):
        return {m: weight_scores(m, saliency) for m in modules}
    if saliency == "random":
        g = torch.Generator().manual_seed(seed)
        return {m: random_scores(m, g) for m in modules}
    if saliency == "taylor":
        return taylor_scores(model, modules, train_batches, loss_fn)
    return activation_scores(model, modules, [x for x, _ in train_batches], saliency)
