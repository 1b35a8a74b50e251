"""Operation counts of one forward pass: dense MACs, the MACs a perfect sparse kernel would do,
and elementwise operations, per sample and per layer.

Layers are counted by forward hooks on the module types below. Operations called as functions
outside any counted module (residual ``a + b``, ``F.relu``, attention matmuls, ``F.linear`` in
custom modules) are counted through a :class:`~torch.overrides.TorchFunctionMode`, so functional
code is not silently free. Conventions: a MAC is one multiply plus one accumulate; bias adds are
not counted; elementwise ops (norms, activations, adds, pooling) cost one op per output element,
reductions one per input element. Leaf modules of unknown type during whose forward nothing was
counted are listed under ``uncounted``; unknown functions under ``uncounted_ops``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from effdl.core.errors import ModelError

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
    nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softmax,
    nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
# Known to do no arithmetic (data movement or lookups only).
_FREE_MODULES: tuple[type, ...] = (
    nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten, nn.Embedding,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.ZeroPad2d,
)

_ELEMENTWISE_FUNCS = frozenset(
    "add iadd radd sub isub rsub mul imul rmul div idiv truediv itruediv rtruediv floordiv neg "
    "relu relu6 leaky_relu prelu gelu silu sigmoid tanh hardtanh hardswish hardsigmoid elu selu "
    "celu mish softplus softmax log_softmax exp log sqrt rsqrt pow square abs clamp clip "
    "maximum minimum where masked_fill layer_norm batch_norm group_norm instance_norm rms_norm "
    "native_layer_norm native_batch_norm max_pool1d max_pool2d max_pool3d max_pool2d_with_indices "
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
    "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d interpolate normalize addcmul "
    "addcdiv lerp erf".split()
)
_REDUCTION_FUNCS = frozenset("mean sum var std norm logsumexp amax amin max min".split())
_FREE_FUNCS = frozenset(
    "get set getitem setitem cat concat concatenate stack split chunk unbind clone contiguous to "
    "copy type float half bfloat16 double int long bool detach dropout alpha_dropout feature_dropout "
    "dropout1d dropout2d dropout3d embedding zeros ones empty full zeros_like ones_like empty_like "
    "full_like arange tensor as_tensor index_select gather pad repeat expand tile roll flip "
    "size dim numel item tolist cpu requires_grad eq ne lt le gt ge view view_as reshape reshape_as "
    "permute transpose swapaxes movedim squeeze unsqueeze flatten unflatten narrow select slice t T "
    "mT H expand expand_as as_strided unfold split_with_sizes".split()
)


def _name(func: Any) -> str:
    """Canonical op name: ``aten.add.Tensor`` / ``Tensor.__iadd__`` / ``add_`` -> add / iadd / add."""
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", str(func))
    return name.strip("_")


def _namespace(func: Any) -> str:
    """``aten`` for ATen ops and plain torch functions; ``quantized`` for ``torch.ops.quantized.*``."""
    if getattr(func, "namespace", None):
        return func.namespace
    qualified = getattr(func, "_qualified_op_name", "")  # OpOverloadPacket: "ns::name"
    return qualified.split("::")[0] if "::" in qualified else "aten"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _density(weight: torch.Tensor | None) -> float:
    if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
        return 1.0
    return int(torch.count_nonzero(weight.detach())) / weight.numel()


def _mha_parts(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[list, int]:
    """(MAC parts as (macs, weight or None), softmax elements) of one MultiheadAttention call."""
    q = kwargs.get("query", args[0] if args else None)
    k = kwargs.get("key", args[1] if len(args) > 1 else q)
    batched = q.dim() == 3
    n = (q.shape[0] if m.batch_first else q.shape[1]) if batched else 1
    lq = (q.shape[1] if m.batch_first else q.shape[0]) if batched else q.shape[0]
    lk = (k.shape[1] if m.batch_first else k.shape[0]) if batched else k.shape[0]
    e = m.embed_dim
    if m.in_proj_weight is not None:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    parts = [
        (n * lq * wq.numel(), wq), (n * lk * wk.numel(), wk), (n * lk * wv.numel(), wv),
        (2 * n * lq * lk * e, None),  # scores and weighted sum over all heads
        (n * lq * m.out_proj.weight.numel(), m.out_proj.weight),
    ]
    return parts, n * m.num_heads * lq * lk


class _Counter(TorchFunctionMode):
    """Collects counts from module hooks and from functions called outside counted modules."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n or "<root>" for n, m in model.named_modules(remove_duplicate=False)}
        self.layers: dict[str, dict] = {}  # name -> {type, parts: [(macs, weight)], module}
        self.elementwise = 0
        self.inside_counted = 0  # >0 while a counted module runs: its functions are its own
        self.quiet = False  # True while our own hook code runs torch functions
        self.stack: list[str] = []
        self.ticks: list[tuple[int, int, int]] = []
        self.ops_seen = 0
        self.misses = 0  # functions we could not count
        self.listings = 0  # modules added to ``uncounted`` (a set would hide repeats)
        self.uncounted: set[str] = set()
        self.uncounted_ops: set[str] = set()

    # ---- functions -------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside_counted or self.quiet:
            return out
        self.quiet = True
        try:
            self._count_function(_name(func), func, args, kwargs or {}, out)
        except Exception:  # an op we misread (e.g. a packed quantized weight): say so, go on
            self._miss(_name(func))
        finally:
            self.quiet = False
        return out

    def _add_layer(self, name: str, kind: str, parts: list, module: nn.Module | None = None) -> None:
        entry = self.layers.setdefault(name, {"type": kind, "parts": [], "module": module, "calls": 0})
        entry["parts"].extend(parts)
        entry["calls"] += 1
        self.ops_seen += 1

    def _count_function(self, name: str, func, args, kwargs, out) -> None:
        where = f"{self.stack[-1] if self.stack else ''}:{name}"
        arg = lambda i, key: kwargs.get(key, args[i] if len(args) > i else None)  # noqa: E731
        namespace = _namespace(func)
        if namespace != "aten":  # quantized::linear and friends: packed weights we cannot read
            self._miss(f"{namespace}.{name}")
            return
        if name == "linear":
            w = arg(1, "weight")
            self._add_layer(where, f"F.{name}", [(out.numel() * w.shape[-1], w)])
        elif name in ("conv1d", "conv2d", "conv3d") or (name == "convolution" and not arg(6, "transposed")):
            w = arg(1, "weight")
            self._add_layer(where, f"F.{name}", [(out.numel() * w[0].numel(), w)])
        elif name.startswith("conv_transpose") or name == "convolution":
            x, w = arg(0, "input"), arg(1, "weight")
            self._add_layer(where, f"F.{name}", [(x.numel() * w[0].numel(), w)])
        elif name in ("matmul", "mm", "bmm"):
            self._add_layer(where, f"F.{name}", [(out.numel() * args[0].shape[-1], None)])
        elif name in ("addmm", "baddbmm"):
            self._add_layer(where, f"F.{name}", [(out.numel() * args[1].shape[-1], None)])
            self.elementwise += out.numel()
        elif name == "scaled_dot_product_attention":
            q, k, v = args[0], args[1], args[2]
            rows = q.numel() // q.shape[-1]
            self._add_layer(where, f"F.{name}", [(rows * k.shape[-2] * (q.shape[-1] + v.shape[-1]), None)])
            self.elementwise += rows * k.shape[-2]  # softmax
        elif name in _ELEMENTWISE_FUNCS:
            self.elementwise += sum(t.numel() for t in _tensors(out)[:1])
            self.ops_seen += 1
        elif name in _REDUCTION_FUNCS:
            self.elementwise += sum(t.numel() for t in _tensors(args)[:1])
            self.ops_seen += 1
        elif name in _FREE_FUNCS or not _tensors(out):
            pass
        else:
            self._miss(name)

    def _miss(self, name: str) -> None:
        self.uncounted_ops.add(name)
        self.misses += 1

    # ---- modules ---------------------------------------------------------------------------
    @staticmethod
    def _known(m: nn.Module) -> bool:
        return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention) + _ELEMENTWISE_MODULES + _FREE_MODULES)

    def pre_hook(self, m: nn.Module, args, kwargs) -> None:
        self.stack.append(self.names.get(m, type(m).__name__))
        self.ticks.append((self.ops_seen, self.misses, self.listings))
        if self._known(m):
            self.inside_counted += 1

    def post_hook(self, m: nn.Module, args, kwargs, out) -> None:
        name = self.stack.pop()
        ops, misses, listed = self.ticks.pop()
        if not self._known(m):
            if self.inside_counted or self.quiet:  # e.g. a weight parametrization: its owner counts
                return
            # Unknown and nothing counted while it ran: list it if it holds weights or ran ops we
            # could not count, unless a submodule was already listed for the same forward.
            own_params = any(True for _ in m.parameters(recurse=False))
            if self.ops_seen == ops and (own_params or self.misses > misses) and self.listings == listed:
                self.uncounted.add(type(m).__name__)
                self.listings += 1
            return
        self.inside_counted -= 1
        self.quiet = True
        try:
            self._count_module(name, m, args, kwargs, out)
        finally:
            self.quiet = False

    def _count_module(self, name: str, m: nn.Module, args, kwargs, out) -> None:
        y = _tensors(out)[0] if _tensors(out) else None
        if isinstance(m, nn.modules.conv._ConvNd):
            per_out = (m.out_channels if m.transposed else m.in_channels) // m.groups * math.prod(m.kernel_size)
            driver = _tensors(args)[0] if m.transposed else y  # transposed: each input element scatters
            self._add_layer(name, type(m).__name__, [(driver.numel() * per_out, m.weight)], m)
        elif isinstance(m, nn.Linear):
            self._add_layer(name, type(m).__name__, [(y.numel() * m.in_features, m.weight)], m)
        elif isinstance(m, nn.MultiheadAttention):
            parts, softmax = _mha_parts(m, args, kwargs)
            self._add_layer(name, type(m).__name__, parts, m)
            self.elementwise += softmax
        elif isinstance(m, _ELEMENTWISE_MODULES) and y is not None:
            self.elementwise += y.numel()
            self.ops_seen += 1


def _call(model: nn.Module, example_input: Any) -> Callable[[], Any]:
    if isinstance(example_input, dict):
        return lambda: model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return lambda: model(*example_input)
    return lambda: model(example_input)


def count_macs(model: nn.Module, example_input: Any, *, batch_size: int | None = None) -> dict:
    """Count one forward of ``example_input`` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs) and return per-sample totals and a per-layer table.

    ``batch_size`` defaults to the first dimension of the first input tensor. The model runs in
    eval mode under ``no_grad`` (so BN statistics are untouched) and every module's training flag
    is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"count_macs needs an nn.Module, got {type(model).__name__}")
    inputs = _tensors(example_input)
    if batch_size is None:
        batch_size = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
    if batch_size < 1:
        raise ModelError(f"batch size must be >= 1 to count per-sample MACs, got {batch_size}: pass a non-empty input")
    counter = _Counter(model)
    flags = {m: m.training for m in model.modules()}
    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(counter.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(counter.post_hook, with_kwargs=True))
        for m in flags:  # not model.eval(): exported GraphModules refuse it, the flag is what counts
            m.training = False
        with torch.no_grad(), counter:
            try:
                _call(model, example_input)()
            except Exception as exc:
                raise ModelError(
                    f"counting MACs failed: the model's forward raised {type(exc).__name__}: {exc}. "
                    "Pass an example input the model accepts"
                ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return _summary(counter, batch_size)


def _per_sample(x: float, batch: int) -> int | float:
    v = x / batch
    return int(v) if float(v).is_integer() else v


def _summary(counter: _Counter, batch: int) -> dict:
    per_layer = []
    densities: dict[int, float] = {}
    for name, e in counter.layers.items():
        macs = sum(p for p, _ in e["parts"])
        sparse = 0.0
        weights = []
        for p, w in e["parts"]:
            if w is not None and id(w) not in densities:
                densities[id(w)] = _density(w)
            sparse += p * (densities[id(w)] if w is not None else 1.0)
            if w is not None and all(w is not o for o in weights):
                weights.append(w)
        total = sum(w.numel() for w in weights)
        density = sum(densities[id(w)] * w.numel() for w in weights) / total if total else 1.0
        module = e["module"]
        per_layer.append({
            "name": name, "type": e["type"], "macs": _per_sample(macs, batch),
            "macs_sparse": sparse / batch, "weight_density": density,
            "params": sum(p.numel() for p in module.parameters()) if module is not None else 0,
            "calls": e["calls"],
        })
    macs = sum(layer["macs"] for layer in per_layer)
    return {
        "macs": macs,
        "macs_sparse": sum(layer["macs_sparse"] for layer in per_layer),
        "flops": 2 * macs,
        "elementwise_ops": _per_sample(counter.elementwise, batch),
        "batch_size": batch,
        "per_layer": per_layer,
        "uncounted": sorted(counter.uncounted),
        "uncounted_ops": sorted(counter.uncounted_ops),
        "method": "forward hooks + torch function mode, per sample; 1 op per output element for elementwise",
    }
