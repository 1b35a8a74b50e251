"""quantize.ptq: post-training static INT8 quantization, calibrated on real batches.

The scheme is the one the x86 int8 kernels run (torchao's X86InductorQuantizer): uint8
per-tensor affine activations, int8 symmetric weights per output channel. Weights use the
restricted range [-127, 127] with scale = max|w| / 127 (floored at 2**-12), the same symmetric
range ONNX Runtime's quantizer uses, so both INT8 runtimes and the stored int8 tensors agree.

The result is a ``QuantizedModel``: the float model (the caller's, or its prepared copy, below), the calibration batches and the
PT2E-converted q/dq graph, whose eager forward simulates INT8 (quantize/dequantize in float). Real int8 execution is the
job of the deploy lowerings (``pt2e-int8``, ``ort-int8``).

``mode="dynamic"`` quantizes the Linear layers' weights only, activations at run time per batch
(torch's ``quantize_dynamic``; lowerings ``torch-int8-dynamic``, ``ort-int8-dynamic``): no activation
ranges to calibrate, the usual choice for MLP/attention-heavy models.

Float-side preparation, in this order, all on the copy being quantized: ``fold_bn`` (bn_fold.py,
lossless; on by default, so the int8 weights stored are the folded ones the kernels run), ``equalize`` (equalize.py, cross-layer equalization, lossless),
``rounding="adaround"`` (adaround.py, learned int8 rounding written back as dequantized weights)
and ``bias_correction`` (bias_correction.py). ``float_model`` is the prepared model: what every
INT8 runtime quantizes and what parity is checked against.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from typing import Literal

import pydantic
import torch
import torch.nn as nn

from ...core.compressed import Int8Model, Int8Spec
from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, DataError, UnsupportedModuleError
from ...core.forms import nonfinite_modules, refuse_quantized
from ...core.records import Part, Record, attach
from ...core.registry import register
from ...core.scope import match_scopes
from .calibration import MSE, Entropy

#: scale floor of the x86 default config (torchao get_default_x86_inductor_quantization_config)
EPS = 2.0**-12
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
#: calibration -> a fresh activation range estimator (8-bit, asymmetric: uint8 activations)
ESTIMATORS = {"entropy": functools.partial(Entropy, bits=8), "mse": functools.partial(MSE, bits=8)}
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FP32Layer(Part):
    """A layer INT8 quantization left in FP32: its module type and why."""

    type: str
    why: str


class Int8LayersRecord(Record):
    """What quantize.ptq quantized (``int8``) and kept in FP32 (``fp32``, the report's fallback table)."""

    key = "int8_layers"
    int8: list[str]
    fp32: dict[str, FP32Layer]


class PTQConfig(TechniqueConfig):
    """Post-training INT8 quantization settings (static or dynamic activations)."""

    bits: Literal[8] = pydantic.Field(8, description="integer width; only 8 for now")
    weight_granularity: Literal["channel", "tensor"] = pydantic.Field(
        "channel", description="one weight scale per output channel, or one per tensor")
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = pydantic.Field(
        "minmax", description="activation range: observed min/max, clipped at percentiles, the KL-optimal clip "
        "(entropy, TensorRT's method) or the squared-error-optimal clip (mse; pt2e-int8 only, ONNX Runtime has none)")
    percentile: float = pydantic.Field(99.99, gt=90, le=100, description="upper percentile kept when calibration='percentile'")
    num_batches: int = pydantic.Field(8, ge=1, description="calibration batches from the train split")
    batch_size: int = pydantic.Field(32, ge=1, description="calibration batch size")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns kept in FP32")
    mode: Literal["static", "dynamic"] = pydantic.Field(
        "static", description="static: calibrated uint8 activations, Conv and Linear; dynamic: activations "
        "quantized per batch at run time, Linear layers only")
    fold_bn: bool = pydantic.Field(
        True, description="fold BatchNorm into the preceding Conv/Linear first (lossless; the stored int8 weights are "
        "then the ones the kernels run)")
    equalize: bool = pydantic.Field(
        False, description="cross-layer equalization of consecutive layers (Nagel et al. 2019); needs fold_bn")
    bias_correction: bool = pydantic.Field(
        False, description="subtract the calibration-measured output shift of weight rounding from biases; needs fold_bn")
    rounding: Literal["nearest", "adaround"] = pydantic.Field(
        "nearest", description="int8 weight rounding: nearest, or learned per layer (AdaRound); adaround needs fold_bn")
    adaround_iterations: int = pydantic.Field(500, ge=1, le=100_000, description="optimizer steps per layer for AdaRound")

    @pydantic.field_validator("bits", mode="before")
    @classmethod
    def _only_eight(cls, v):
        if isinstance(v, bool) or v != 8:
            raise ValueError(
                "quantize.ptq supports bits=8 only; other widths (4-bit weights, 16-bit) come in a "
                "later release. Use bits=8"
            )
        return v

    @pydantic.model_validator(mode="after")
    def _needs_folding(self):
        wanted = [n for n, on in (("equalize", self.equalize), ("bias_correction", self.bias_correction),
                                  ("rounding='adaround'", self.rounding == "adaround")) if on]
        if wanted and not self.fold_bn:
            # the int8 kernels fold BN into the weights themselves, which would undo work done on
            # the unfolded weights (and a BN between two layers blocks equalization)
            raise ValueError(f"{', '.join(wanted)} needs fold_bn=True (the int8 kernels quantize BatchNorm-folded "
                             "weights); set fold_bn=True as well (a no-op on models without BatchNorm)")
        return self


class QuantizedModel(Int8Model):
    """A float model plus its INT8 twin: the calibrated PT2E q/dq graph (static; ``forward``
    simulates INT8) or torch's dynamic-INT8 model (dynamic; ``forward`` runs its int8 kernels).

    Inference only: ``train()`` just records the flag (the exported graph has no training mode).
    Its float reference is ``float_model``, the prepared (e.g. BN-folded) model every INT8 runtime
    quantizes.
    """

    def __init__(self, float_model: nn.Module, config: PTQConfig, calibration: list[torch.Tensor],
                 reference: nn.Module, quantized_modules: tuple[str, ...], excluded: tuple[str, ...],
                 input_ranges: dict[str, tuple[float, float]] | None = None) -> None:
        super().__init__()
        self.float_model = float_model.eval()
        self.reference = reference
        self.config = config
        self.calibration = list(calibration)
        #: names of the Conv/Linear modules whose weights are int8 in every INT8 runtime
        self.quantized_modules = tuple(quantized_modules)
        #: names of the modules kept in FP32 because of ``config.exclude``
        self.excluded = tuple(excluded)
        #: layer name -> (lo, hi) of its input, fixed by the producer (QAT) instead of calibrated;
        #: every static INT8 runtime uses them
        self.input_ranges = dict(input_ranges or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x)

    def train(self, mode: bool = True) -> "QuantizedModel":
        self.training = bool(mode)
        return self

    @property
    def runtime_kind(self) -> str:
        return f"int8-{self.config.mode}"

    def float_reference(self) -> nn.Module:
        return self.float_model

    def int8_spec(self) -> Int8Spec:
        return Int8Spec(
            settings=self.config.to_dict(), calibration_method=self.config.calibration,
            percentile=self.config.percentile, per_channel=self.config.weight_granularity == "channel",
            calibration=tuple(self.calibration), input_ranges=dict(self.input_ranges),
            quantized_modules=self.quantized_modules,
            kept_float=tuple(dict.fromkeys(self.excluded + self.float_modules())), torch_int8=self.reference)

    def float_modules(self) -> tuple[str, ...]:
        """Conv/Linear modules left in FP32 (excluded, or a type the int8 kernels lack)."""
        return tuple(n for n, m in self.float_model.named_modules()
                     if isinstance(m, _WEIGHTED) and n not in self.quantized_modules)

    @property
    def unsupported(self) -> tuple[str, ...]:
        """Conv/Linear modules kept in FP32 only because no int8 kernel matched them (not excluded)."""
        return tuple(n for n in self.float_modules() if not _under(n, self.excluded))

    def storage_tensors(self) -> dict[str, torch.Tensor]:
        """What an INT8 checkpoint stores: int8 weights + float32 scales, everything else as is.

        For each quantized module ``<name>.weight.int8 = clamp(round(w / scale), -127, 127)`` with
        ``<name>.weight.scale = max(max|w| / 127, 2**-12)`` per output channel (one value for
        ``weight_granularity='tensor'``); other floating tensors of the float state dict unchanged.
        """
        out: dict[str, torch.Tensor] = {}
        skip = set()
        for name in self.quantized_modules:
            w = self.float_model.get_submodule(name).weight.detach().float()
            q, scale = quantize_weight(w, self.config.weight_granularity)
            out[f"{name}.weight.int8"] = q
            out[f"{name}.weight.scale"] = scale
            skip.add(f"{name}.weight")
        for key, t in self.float_model.state_dict().items():
            if key not in skip and t.is_floating_point():
                out[key] = t.detach()
        return out


def _attach_error_records(result: "QuantizedModel", ranges: dict[str, tuple[float, float, float, float]]) -> None:
    """The report's quantization views for PTQ: per int8 layer, the histogram of its stored weights'
    error (int8 * scale - float, the same codes ``storage_tensors`` writes), and for static INT8 each
    layer's calibrated input range with the clip calibration chose."""
    from .qat import ActRange, ActRangesRecord, ErrorHist, QuantErrorHistRecord, histogram_record

    layers = {}
    for name in result.quantized_modules:
        w = result.float_model.get_submodule(name).weight.detach().float()
        q, scale = quantize_weight(w, result.config.weight_granularity)
        err = q.float() * scale.reshape((-1,) + (1,) * (w.dim() - 1)) - w
        layers[name] = ErrorHist(**histogram_record({"weights": err}))
    if layers:
        attach(result, QuantErrorHistRecord(layers=layers))
    if any(n in result.quantized_modules for n in ranges):
        attach(result, ActRangesRecord(layers={n: ActRange(min=lo, max=hi, clip_lo=a, clip_hi=b)
                                               for n, (lo, hi, a, b) in ranges.items()
                                               if n in result.quantized_modules}))


def quantize_weight(w: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of a Conv/Linear weight (output channels on dim 0): (int8 tensor, scale)."""
    flat = w.reshape(w.shape[0], -1)
    amax = flat.abs().amax(1) if granularity == "channel" else flat.abs().amax().reshape(1)
    scale = (amax / WEIGHT_QMAX).clamp_min(EPS).float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.reshape(shape)).clamp(WEIGHT_QMIN, WEIGHT_QMAX).to(torch.int8)
    return q, scale


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- validation --------------------------------------------------------------------------------
def _check_finite(model: nn.Module) -> None:
    bad = nonfinite_modules(model)
    if bad:
        raise ConfigError(
            f"quantize.ptq: NaN/Inf in the weights of module(s) {', '.join(map(repr, bad))}; "
            "INT8 ranges cannot be computed. Fix the checkpoint (retrain, or lower the learning rate)"
        )


def _check_calibration(model: nn.Module, calibration: list[torch.Tensor], task) -> None:
    """Finite batches of the task's input shape that the model accepts, or a DataError saying which."""
    if not calibration:
        raise DataError("quantize.ptq: the task's calibration_batches gave no batch: give it real inputs from the "
                        "train split (at least one sample)")
    expected = tuple(task.example_input(1).shape[1:]) if task is not None else ()
    fixed = [d for d in range(1, len(expected) + 1) if task is not None and d not in task.dynamic_axes]
    for i, x in enumerate(calibration):
        if expected and (x.dim() != len(expected) + 1 or any(x.shape[d] != expected[d - 1] for d in fixed)):
            raise DataError(
                f"quantize.ptq: calibration batch {i} has samples of shape {tuple(x.shape[1:])}, expected "
                f"{expected} (the task's input shape): make the calibration data match the model's inputs"
            )
        if x.shape[0] == 0:
            raise DataError(f"quantize.ptq: calibration batch {i} is empty (0 samples): give calibration_batches "
                            "batches of at least one real input")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"quantize.ptq: calibration batch {i} contains NaN/Inf: clean the train split")
    try:
        with torch.no_grad():
            model(calibration[0][:2])
    except Exception as exc:  # the model's own error type; what matters is the shape it refused
        raise DataError(
            f"quantize.ptq: the model fails on a calibration batch of shape {tuple(calibration[0].shape)} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}): "
            "calibrate with inputs of the shape the model expects"
        ) from None


def _candidates(model: nn.Module, config: PTQConfig, excluded: tuple[str, ...]) -> list[str]:
    """Layers whose weights the chosen mode's int8 kernels quantize (forward order), excluded ones aside."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear) if config.mode == "static" else (nn.Linear,)
    return [n for n, m in model.named_modules() if isinstance(m, kinds) and not _under(n, excluded)]


def prepare_float(model: nn.Module, config: PTQConfig, calibration: list[torch.Tensor],
                  excluded: tuple[str, ...]) -> nn.Module:
    """The float model every INT8 runtime will quantize: BN folding, equalization, AdaRound and
    bias correction as configured (each step returns or edits a copy, never the caller's model)."""
    if config.fold_bn:
        from .bn_fold import fold_batchnorm

        model = fold_batchnorm(model)
    if config.equalize:
        from .equalize import equalize

        model = equalize(model)
    layers = _candidates(model, config, excluded)
    if config.rounding == "adaround":
        from .adaround import adaround

        adaround(model, layers, calibration, config.weight_granularity, iterations=config.adaround_iterations)
    if config.bias_correction:
        from .bias_correction import correct_bias

        def dequantize(w: torch.Tensor) -> torch.Tensor:
            q, scale = quantize_weight(w, config.weight_granularity)
            return q.float() * scale.reshape((-1,) + (1,) * (w.dim() - 1))

        correct_bias(model, layers, calibration, dequantize)
    return model.eval()


def build_dynamic_reference(model: nn.Module, config: PTQConfig,
                            excluded: tuple[str, ...]) -> tuple[nn.Module, tuple[str, ...]]:
    """torch's dynamic INT8 (real int8 Linear kernels) with effdl's weight scheme: symmetric
    [-127, 127], scale max|w| / 127 per output channel (or per tensor)."""
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, PlaceholderObserver, QConfig
    from torch.ao.quantization import quantize_dynamic

    if config.weight_granularity == "channel":
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                    quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                          quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    act = PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
    layers = _candidates(model, config, excluded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization's deprecation notice
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        reference = quantize_dynamic(copy.deepcopy(model), {n: QConfig(activation=act, weight=weight) for n in layers},
                                     dtype=torch.qint8)
    return reference.eval(), tuple(layers)


# -- PT2E --------------------------------------------------------------------------------------
def _quantizer(config: PTQConfig, excluded: tuple[str, ...]):
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from .observers import EstimatorObserver, PercentileObserver, PerChannelSharedScaleObserver

    base = xiq.get_default_x86_inductor_quantization_config()
    if config.calibration == "minmax":
        act_obs = MinMaxObserver.with_args(eps=EPS)
    elif config.calibration == "percentile":
        act_obs = PercentileObserver.with_args(percentile=config.percentile, eps=EPS)
    else:
        act_obs = EstimatorObserver.with_args(estimator=ESTIMATORS[config.calibration], eps=EPS)
    w_obs = PerChannelMinMaxObserver if config.weight_granularity == "channel" else PerChannelSharedScaleObserver
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=act_obs)
    weight = dataclasses.replace(base.weight, quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX,
                                 observer_or_fake_quant_ctr=w_obs.with_args(eps=EPS))
    quantizer = xiq.X86InductorQuantizer().set_global(QuantizationConfig(act, act, weight, None, False))
    for name in excluded:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def _export(model: nn.Module, example: torch.Tensor, dynamic_axes: dict[int, str] | None = None) -> nn.Module:
    """torch.export with the task's dynamic axes (the batch; and the sequence of token inputs, so the
    INT8 graph runs at any length, as the float model does)."""
    axes = dict(dynamic_axes or {0: "batch"})
    if example.shape[0] < 2:  # a batch of 1 would be specialised to a constant by torch.export
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        shapes = {d: torch.export.Dim(name) if d == 0 else torch.export.Dim.AUTO for d, name in axes.items()}
        gm = torch.export.export(model, (example,), dynamic_shapes=(shapes,)).module()
        # outputs nobody uses (e.g. a BERT pooler next to the pooled embedding) would reach the
        # quantizer as dangling patterns, which it cannot annotate
        gm.graph.eliminate_dead_code()
        gm.recompile()
        return gm
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModuleError(
            f"quantize.ptq: torch.export cannot capture the model with a dynamic batch dimension "
            f"({type(exc).__name__}: {first}). Fix: avoid Python control flow on tensor values and "
            "hard-coded batch sizes in forward (use x.flatten(1), not x.view(32, -1))"
        ) from None


def _where(node) -> str:
    """Where an observed tensor comes from, in the user's module names."""
    if node.op == "placeholder":
        return "the model input"
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f"the output of {path!r} ({node.name})" if path else f"the output of {node.name!r}"


def _activation_observers(prepared):
    """(node, observer, observed lo, observed hi) of every calibrated per-tensor activation observer;
    observers never reached during calibration are skipped (torchao warns about those itself)."""
    from torchao.quantization.pt2e import ObserverBase

    from .observers import EstimatorObserver, PercentileObserver

    for node in prepared.graph.nodes:
        obs = getattr(prepared, node.target, None) if node.op == "call_module" else None
        if not isinstance(obs, ObserverBase) or obs.qscheme != torch.per_tensor_affine:
            continue
        lo, hi = (obs.lo, obs.hi) if isinstance(obs, (PercentileObserver, EstimatorObserver)) else (obs.min_val, obs.max_val)
        if torch.isfinite(lo) and torch.isfinite(hi):
            yield node, obs, lo, hi


def _warn_degenerate(prepared) -> None:
    """Warn, naming the layer, where calibration saw a constant tensor (scale floored at EPS)."""
    for node, obs, lo, hi in _activation_observers(prepared):
        scale = float(obs.calculate_qparams()[0].reshape(-1)[0])
        if float(hi) - float(lo) <= 0 or scale <= EPS * (1 + 1e-6):
            warnings.warn(
                f"quantize.ptq: calibration saw a constant value ({float(lo):g}) at "
                f"{_where(node.args[0])}; its INT8 scale is floored at {scale:g}. "
                "Use calibration data that varies (real inputs, more batches)",
                RuntimeWarning, stacklevel=3,
            )


def _activation_ranges(prepared, rewritten: frozenset[str]) -> dict[str, tuple[float, float, float, float]]:
    """Layer -> (observed min, observed max, clip lo, clip hi) of its calibrated uint8 input: what
    calibration saw and the range the scale / zero point keep (the rest saturates)."""
    out = {}
    for node, obs, lo, hi in _activation_observers(prepared):
        scale, zp = (float(t.reshape(-1)[0]) for t in obs.calculate_qparams())
        clip = ((obs.quant_min - zp) * scale, (obs.quant_max - zp) * scale)
        for user in node.users:
            layer = _module_of(user, rewritten)
            if layer is not None and layer not in out:
                out[layer] = (float(lo), float(hi), *clip)
    return out


class _Conv1dAs2d(nn.Module):
    """A Conv1d computed as the equivalent Conv2d over a height-1 image (same numbers).

    torchao's x86 quantizer annotates Conv1d+ReLU, but inductor (torch 2.13) fails to compile the
    resulting int8 conv1d with freezing; as Conv2d it lowers to the oneDNN int8 kernel.
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        pad = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                              stride=(1, conv.stride[0]), padding=pad, dilation=(1, conv.dilation[0]),
                              groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.detach().unsqueeze(2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def _conv1d_as_conv2d(model: nn.Module) -> tuple[nn.Module, frozenset[str]]:
    """A copy of ``model`` with every zero-padded Conv1d wrapped as ``_Conv1dAs2d`` (same names)."""
    names = [n for n, m in model.named_modules(remove_duplicate=False)
             if n and isinstance(m, nn.Conv1d) and m.padding_mode == "zeros"]
    if not names:
        return model, frozenset()
    out = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = out.get_submodule(parent) if parent else out
        setattr(holder, child, _Conv1dAs2d(getattr(holder, child)))
    return out, frozenset(names)


def _module_of(node, rewritten: frozenset[str]) -> str | None:
    """The float model's module a graph node belongs to (a rewritten Conv1d's inner ``.conv`` maps
    back to the Conv1d), or None."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removesuffix(".conv") if path.endswith(".conv") and path.removesuffix(".conv") in rewritten else path


def _int8_modules(converted, rewritten: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Modules whose weight is an int8 constant in the converted graph (the truth, not a guess),
    named as in the float model."""
    names: list[str] = []
    for node in converted.graph.nodes:
        if node.op != "call_function" or "dequantize_per_channel" not in str(node.target):
            continue
        src = node.args[0]
        if src.op != "get_attr" or getattr(converted, src.target).dtype != torch.int8:
            continue
        for user in node.users:
            path = _module_of(user, rewritten)
            if path is not None and path not in names:
                names.append(path)
    return tuple(names)


def _fix_input_ranges(prepared, ranges: dict[str, tuple[float, float]], rewritten: frozenset[str]) -> None:
    """Set the observer in front of each named layer to its given input range (the union where
    one observed tensor feeds several of them)."""
    from torchao.quantization.pt2e import MinMaxObserver

    for node in prepared.graph.nodes:
        obs = getattr(prepared, node.target, None) if node.op == "call_module" else None
        if not isinstance(obs, MinMaxObserver):
            continue
        given = [ranges[m] for m in (_module_of(u, rewritten) for u in node.users) if m in ranges]
        if given:
            obs.min_val = torch.tensor(min(lo for lo, _ in given))
            obs.max_val = torch.tensor(max(hi for _, hi in given))


_NOISY = ("The input of maxpool2d is not quantized", "must run observer before calling calculate_qparams",
          "To copy construct from a tensor")


def build_reference(model: nn.Module, config: PTQConfig, calibration: list[torch.Tensor],
                    excluded: tuple[str, ...], input_ranges: dict[str, tuple[float, float]] | None = None,
                    dynamic_axes: dict[int, str] | None = None,
                    ) -> tuple[nn.Module, tuple[str, ...], dict[str, tuple[float, float, float, float]]]:
    """Export, insert observers, calibrate (then pin the ``input_ranges`` given), convert: the
    simulated-INT8 q/dq GraphModule, the names of the float model's modules whose weights it holds
    in int8, and each layer's calibrated input range with its clip (``_activation_ranges``)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with warnings.catch_warnings():
        for msg in _NOISY:  # torchao's informational chatter, not a problem of the user's model
            warnings.filterwarnings("ignore", message=msg)
        traced, rewritten = _conv1d_as_conv2d(model)
        exported = _export(traced, calibration[0], dynamic_axes)
        try:
            prepared = prepare_pt2e(exported, _quantizer(config, excluded))
        except Exception as exc:  # the quantizer's pattern matching raises bare IndexError/KeyError/...
            raise UnsupportedModuleError(
                f"quantize.ptq: the x86 INT8 quantizer cannot annotate this model's graph ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Fix: use mode='dynamic' (Linear "
                "layers only), or exclude the layers around the failing pattern with exclude=[...]"
            ) from None
        move_exported_model_to_eval(prepared)
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        if input_ranges:
            _fix_input_ranges(prepared, input_ranges, rewritten)
        _warn_degenerate(prepared)
        ranges = _activation_ranges(prepared, rewritten)
        converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return converted, _int8_modules(converted, rewritten), ranges


@register("quantize.ptq", PTQConfig, needs="calibration", models=("cnn", "mlp", "encoder", "decoder"), example=lambda: PTQConfig(num_batches=1, batch_size=8))
def ptq(model: nn.Module, config: PTQConfig, task) -> QuantizedModel:
    """Post-training static INT8 (per-channel int8 weights, uint8 activations), real-batch calibrated."""
    return quantize_int8(model, config, task)


def quantize_int8(model: nn.Module, config: PTQConfig, task,
                  input_ranges: dict[str, tuple[float, float]] | None = None) -> QuantizedModel:
    """quantize.ptq, optionally with the input ranges of some layers given rather than calibrated
    (layer name -> (lo, hi); static min-max only: quantize.qat passes its trained ranges)."""
    if input_ranges and (config.mode, config.calibration) != ("static", "minmax"):
        raise ConfigError("input_ranges replace min-max calibration of static INT8: use mode='static', calibration='minmax'")
    refuse_quantized(model, "quantize.ptq")
    if task is None:
        raise ConfigError("quantize.ptq needs calibration data: pass task=ImageClassification(...)")
    model = model.eval()
    _check_finite(model)
    excluded = tuple(sorted(match_scopes(model, config.exclude)))
    calibration = task.calibration_batches(config.num_batches, config.batch_size)
    _check_calibration(model, calibration, task)
    model = prepare_float(model, config, calibration, excluded)
    if config.mode == "static":
        reference, int8, ranges = build_reference(model, config, calibration, excluded, input_ranges,
                                                  task.dynamic_axes)
        kernels = "the x86 int8 quantizer (Conv1d/Conv2d and Linear patterns) did not match them"
    else:
        reference, int8 = build_dynamic_reference(model, config, excluded)
        ranges = {}  # activations are quantized per batch at run time: nothing calibrated
        kernels = "dynamic int8 kernels (torch and ONNX Runtime) here cover Linear layers only"
    result = QuantizedModel(model, config, calibration, reference, int8, excluded, input_ranges)
    kept = {n: FP32Layer(type=type(model.get_submodule(n)).__name__,
                         why="no int8 kernel" if n in result.unsupported else "excluded (config.exclude)")
            for n in result.float_modules()}
    attach(result, Int8LayersRecord(int8=list(result.quantized_modules), fp32=kept))
    if not input_ranges:  # QAT's conversion: its own records (trained ranges, per-epoch error) are the story
        _attach_error_records(result, ranges)
    if result.unsupported:
        kinds = {n: type(model.get_submodule(n)).__name__ for n in result.unsupported}
        warnings.warn(
            f"quantize.ptq: kept in FP32 because {kernels}: "
            + ", ".join(f"{n!r} ({k})" for n, k in kinds.items())
            + ". Every INT8 runtime keeps them FP32 too (listed in QuantizedModel.unsupported)",
            UserWarning, stacklevel=2,
        )
    return result
