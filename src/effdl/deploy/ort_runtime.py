"""ONNX Runtime lowerings (CPU): FP32, static QDQ INT8 and dynamic INT8.

INT8 follows REFERENCE.md: per-channel int8 weights with uint8 activations (U8S8); ORT's default
int8 activations (S8S8) run slower than FP32 on this CPU. Layers a ``QuantizedModel`` keeps in
FP32 (excluded, or types the PT2E int8 kernels lack) stay FP32 here too, so both INT8 runtimes
and the stored int8 tensors describe the same model.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import ArtifactError, ConfigError, UnsupportedModuleError
from ..core.compressed import Int8Spec
from ..core.io import state_digest
from .lowered import Lowered, as_logits, int8_spec
from .onnx_export import OPSET, check_size, export_onnx, node_modules


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load {str(path)!r}: {str(exc).splitlines()[0][:300]}") from None


#: ONNX input element types of models with integer inputs (token ids); any other runs on float32
_INT_INPUTS = {"tensor(int64)": torch.int64, "tensor(int32)": torch.int32}


def _predict(sess):
    first = sess.get_inputs()[0]
    name, dtype = first.name, _INT_INPUTS.get(first.type, torch.float32)

    def predict(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to(dtype).contiguous().numpy()
        return as_logits(sess.run(None, {name: arr})[0])

    return predict


def _stem(model: nn.Module) -> str:
    """File stem from the model's class and a digest of its weights (distinct models never collide)."""
    return f"{type(model).__name__.lower()}-{state_digest(model)[:10]}"


def _info(sess, path: Path, threads: int, **seconds: float) -> dict:
    return {"threads": threads, "inter_op_threads": 1, "provider": sess.get_providers()[0],
            "graph_optimization": "ORT_ENABLE_ALL", "opset": OPSET, "onnx_bytes": path.stat().st_size,
            **{k: round(v, 3) for k, v in seconds.items()}}


def lower_ort(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    model.eval()
    check_size(model)
    path = Path(workdir) / f"{_stem(model)}.onnx"
    t0 = time.perf_counter()
    export_onnx(model, task.example_input(max(2, max(batch_sizes))), path, task.dynamic_axes)
    export_s = time.perf_counter() - t0
    sess = session(path, threads)
    return Lowered("ort", "fp32", True, _predict(sess), path, _info(sess, path, threads, export_s=export_s))


class _Reader:
    """onnxruntime CalibrationDataReader over the QuantizedModel's own calibration batches."""

    def __init__(self, batches: list[torch.Tensor], name: str) -> None:
        # integer batches (token ids) stay integer: the graph's input is
        self.items = iter([{name: (b.detach() if not b.is_floating_point() else b.detach().float()).contiguous().numpy()}
                           for b in batches])

    def get_next(self):
        return next(self.items, None)


def _owner(name: str, keep_float: tuple[str, ...]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep_float)


def _float_nodes(onnx_path: Path, keep_float: tuple[str, ...]) -> list[str]:
    """Names of ONNX nodes that belong to a module in ``keep_float`` (or one of its submodules).

    A node belongs to the modules of its exporter scope; a weighted node also to the module named
    by its weight initializer (``<module>.weight``), because the exporter fuses Conv+BatchNorm
    into one Conv that carries the BatchNorm's scope but keeps the conv's weight name.
    """
    import onnx

    if not keep_float:
        return []
    proto = onnx.load(str(onnx_path), load_external_data=False)
    owners = node_modules(proto)
    out = []
    for node in proto.graph.node:
        mods = list(owners.get(node.name, []))
        if len(node.input) > 1 and node.input[1].endswith(".weight"):
            mods.append(node.input[1].removesuffix(".weight"))
        if any(_owner(m, keep_float) for m in mods):
            out.append(node.name)
    return sorted(out)


@contextlib.contextmanager
def _collect_root_logging(records: list[str]):
    """ORT's quantizer logs through the root logger; keep its notes in ``info``, off the terminal."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Collect(logging.WARNING)]
    try:
        yield
    finally:
        root.handlers = saved


def _quantize_onnx(model: nn.Module, spec: Int8Spec, task, workdir: Path, tag: str,
                   quantize) -> tuple[Path, Path, list[str], list[str], float]:
    """Export the INT8 model's float reference, run ``quantize(pre_processed, out, nodes_to_exclude)``
    (an ORT quantizer call) and move the result to ``<stem>.<tag>.onnx`` atomically.

    Returns (quantized path, float path, nodes kept FP32, quantizer notes, seconds).
    """
    float_model = model.float_reference()
    check_size(float_model)
    workdir = Path(workdir)
    stem = _stem(float_model)
    float_path = workdir / f"{stem}.float.onnx"
    out = workdir / f"{stem}.{tag}.onnx"
    t0 = time.perf_counter()
    export_onnx(float_model, task.example_input(2), float_path, task.dynamic_axes)
    exclude_nodes = _float_nodes(float_path, spec.kept_float)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f".{tag}-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        staged = Path(tmp) / f"{tag}.onnx"
        try:
            # ORT's calibrators print progress to stdout
            with contextlib.redirect_stdout(io.StringIO()), _collect_root_logging(notes):
                from onnxruntime.quantization.shape_inference import quant_pre_process

                # ORT's symbolic shape inference dumps its model into the working directory when it
                # cannot resolve a shape: work inside the temporary directory
                src, dst = str(float_path.resolve()), str(pre.resolve())  # absolute: the cwd changes
                with contextlib.chdir(tmp):
                    try:
                        quant_pre_process(src, dst, auto_merge=True)
                    except Exception:  # noqa: BLE001 - symbolic inference gives up on some dynamic
                        # sequence graphs (attention reshapes); it only serves graph optimisation here
                        notes.append("symbolic shape inference incomplete: pre-processed without it")
                        quant_pre_process(src, dst, skip_symbolic_shape=True)
                quantize(pre, staged, exclude_nodes)
        except Exception as exc:  # ORT's quantizer raises many types
            raise UnsupportedModuleError(
                f"ONNX Runtime quantization ({tag}) failed: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}. "
                "Fix: use the pt2e-int8 (static) or torch-int8-dynamic (dynamic) runtime for this model"
            ) from None
        os.replace(staged, out)  # same file system: the final name appears complete or not at all
    return out, float_path, exclude_nodes, notes, time.perf_counter() - t0


def _activation_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes neither of whose inputs is a weight (initializer)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def _input_overrides(onnx_path: Path, ranges: dict[str, tuple[float, float]]) -> dict[str, list[dict]]:
    """ORT TensorQuantOverrides pinning the input of each named layer's node (found by its weight
    initializer ``<layer>.weight``) to the given range; the union where layers share an input."""
    import numpy as np
    import onnx

    bounds: dict[str, tuple[float, float]] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        layer = node.input[1].removesuffix(".weight") if len(node.input) > 1 else None
        if layer in ranges:
            lo, hi = ranges[layer]
            old = bounds.get(node.input[0], (lo, hi))
            bounds[node.input[0]] = (min(lo, old[0]), max(hi, old[1]))
    return {t: [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}]
            for t, (lo, hi) in bounds.items()}


def lower_ort_int8(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    """ORT static QDQ with uint8 activations (U8S8): REFERENCE measured it faster than S8S8 on
    ResNet and the encoder."""
    return _lower_ort_static(model, task, workdir, threads, "ort-int8", signed_activations=False)


def lower_ort_int8_s8s8(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    """ORT static QDQ with int8 activations (S8S8, ORT's default): faster than U8S8 on some
    Gemm-only models (the MLP here), slower on convolutions; measured, not assumed."""
    return _lower_ort_static(model, task, workdir, threads, "ort-int8-s8s8", signed_activations=True)


def _lower_ort_static(model: nn.Module, task, workdir: Path, threads: int, runtime: str,
                      signed_activations: bool) -> Lowered:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    spec = int8_spec(model, runtime, "int8-static", "ort-int8-dynamic")
    if spec.calibration_method == "mse":
        raise ConfigError(f"{runtime}: ONNX Runtime has no MSE-optimal calibrator, so it cannot reproduce "
                          "calibration='mse': use the pt2e-int8 runtime, or calibration='entropy'")
    if spec.calibration_method == "entropy":  # ORT's own implementation of TensorRT's KL method
        method, extra = CalibrationMethod.Entropy, {}
    elif spec.calibration_method == "percentile":
        # ORT's default percentile range is symmetric (|x| histogram, -t..t), which wastes half of
        # uint8 on ReLU outputs: ask for the raw-value histogram. ORT then cuts (100 - p)/2 % from
        # each tail and ours (100 - p) % from each, so pass p' = 2p - 100 to get the same cut.
        method = CalibrationMethod.Percentile
        extra = {"CalibPercentile": 2 * spec.percentile - 100, "CalibTensorRangeSymmetric": False}
    else:
        method, extra = CalibrationMethod.MinMax, {}
    extra.update(WeightSymmetric=True, ActivationSymmetric=False)

    def quantize(pre: Path, staged: Path, exclude_nodes: list[str]) -> None:
        # transformers (activation x activation MatMuls: attention): quantize only the weighted
        # ops, as PT2E does, and leave attention, softmax, layer norms and residual adds FP32;
        # ORT's default also quantizes those, which wrecks fidelity (min cosine 0.08 on MiniLM)
        attention = _activation_matmuls(pre)
        exclude_nodes += attention
        op_types = ["Conv", "MatMul", "Gemm"] if attention else None  # None: ORT's default op types
        if attention:  # inputs of the weighted ops only: their outputs feed FP32 ops
            extra["OpTypesToExcludeOutputQuantization"] = op_types
        if spec.input_ranges:  # given (QAT's trained ranges): override ORT's calibration of those tensors
            extra["TensorQuantOverrides"] = _input_overrides(pre, spec.input_ranges)
        quantize_static(
            str(pre), str(staged), _Reader(list(spec.calibration), "input"),
            quant_format=QuantFormat.QDQ, per_channel=spec.per_channel,
            activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            calibrate_method=method, nodes_to_exclude=exclude_nodes, extra_options=extra,
        )

    tag = runtime.removeprefix("ort-")
    out, float_path, exclude_nodes, notes, quant_s = _quantize_onnx(model, spec, task, workdir, tag, quantize)
    sess = session(out, threads)
    info = _info(sess, out, threads, quantize_s=quant_s)
    info.update(
        quantization=spec.settings, float_onnx=str(float_path),
        scheme=("QDQ, S8S8 (int8 activations" if signed_activations else "QDQ, U8S8 (uint8 activations")
        + ", int8 symmetric weights)",
        per_channel=spec.per_channel, calibrate_method=method.name,
        calibration_batches=len(spec.calibration), nodes_kept_float=exclude_nodes,
        given_input_ranges=sorted(spec.input_ranges),
        qdq_nodes=_count_qdq(out), quantizer_notes=notes[:20],
    )
    return Lowered(runtime, "int8", False, _predict(sess), out, info)


def lower_ort_int8_dynamic(model: nn.Module, *, task, workdir: Path, threads: int,
                           batch_sizes: tuple[int, ...]) -> Lowered:
    """ORT ``quantize_dynamic``: int8 weights of MatMul/Gemm (the Linear layers), activations
    quantized per batch at run time (DynamicQuantizeLinear + MatMulInteger). Convs stay FP32, as in
    torch's dynamic INT8, so both dynamic runtimes run the same model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    spec = int8_spec(model, "ort-int8-dynamic", "int8-dynamic", "ort-int8")

    def quantize(pre: Path, staged: Path, exclude_nodes: list[str]) -> None:
        quantize_dynamic(str(pre), str(staged), op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=spec.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=exclude_nodes, extra_options={"WeightSymmetric": True})

    out, float_path, exclude_nodes, notes, quant_s = _quantize_onnx(model, spec, task, workdir, "int8-dynamic", quantize)
    sess = session(out, threads)
    info = _info(sess, out, threads, quantize_s=quant_s)
    info.update(
        quantization=spec.settings, float_onnx=str(float_path),
        scheme="dynamic: uint8 activations quantized per batch, int8 symmetric weights (MatMulInteger)",
        per_channel=spec.per_channel, nodes_kept_float=exclude_nodes,
        integer_nodes=_count_ops(out, ("MatMulInteger", "ConvInteger")), quantizer_notes=notes[:20],
    )
    return Lowered("ort-int8-dynamic", "int8", False, _predict(sess), out, info)


def _count_ops(path: Path, op_types: tuple[str, ...]) -> int:
    import onnx

    return sum(n.op_type in op_types for n in onnx.load(str(path)).graph.node)


def _count_qdq(path: Path) -> int:
    return _count_ops(path, ("QuantizeLinear",))
