"""FP32 ONNX export (torch.onnx dynamo exporter) with a dynamic batch dimension, written atomically."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import ArtifactError, UnsupportedModuleError
from ..core.io import atomic_write

OPSET = 18
#: protobuf's hard limit for a single-file ONNX model
MAX_SINGLE_FILE_BYTES = 2 * 1024**3
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress to stdout and logs missing-torchvision notes: keep them out of
    the user's terminal (real failures still raise)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_size(model: nn.Module) -> None:
    """Refuse, before any work, a model whose tensors exceed protobuf's 2 GB single-file limit."""
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if nbytes >= MAX_SINGLE_FILE_BYTES * 0.95:
        raise ArtifactError(
            f"the model's tensors take {nbytes / 1024**3:.2f} GiB, over the 2 GB single-file ONNX "
            "limit; the ORT lowerings do not write external-data ONNX yet: use the eager or compile runtime"
        )


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                dynamic_axes: dict[int, str] | None = None) -> Path:
    """Export ``model`` (eval mode) to ``path`` with inputs ``input`` [batch, ...] -> ``logits``.

    ``dynamic_axes`` (default: the batch only) names the input axes left dynamic in the graph, e.g.
    ``{0: "batch", 1: "sequence"}`` for token ids (``Task.dynamic_axes``).

    The exporter's optimizer runs (constant folding, Conv+BatchNorm fusion); each node keeps its
    module scope in the metadata (see ``node_modules``) and fused convs keep their weight's name.
    """
    check_size(model)
    axes = dict(dynamic_axes or {0: "batch"})
    if example.shape[0] < 2:
        # a batch of 1 would let the exporter specialise the batch dimension to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    # likewise a dynamic axis of size 1 would be specialised
    small = [d for d in axes if d > 0 and example.shape[d] < 2]
    if small:
        raise UnsupportedModuleError(f"ONNX export: the example input's dynamic axes {small} have size 1; "
                                     "export with an example of length >= 2 on every dynamic axis")
    model = model.eval()
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=OPSET, optimize=True,
                dynamic_shapes=({d: torch.export.Dim(name) for d, name in axes.items()},),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsupportedModuleError(
            f"ONNX export of {type(model).__name__} failed ({type(exc).__name__}: {first[:300]}). "
            "Fix: make forward exportable by torch.export (no data-dependent Python control flow, "
            "no hard-coded batch size), or use the eager/compile runtime"
        ) from None
    return atomic_write(Path(path), lambda tmp: program.save(tmp))


def node_modules(onnx_model) -> dict[str, list[str]]:
    """ONNX node name -> the PyTorch module names (outermost first) it came from.

    Read from the exporter's ``pkg.torch.onnx.name_scopes`` metadata; nodes without it map to [].
    """
    import ast

    out: dict[str, list[str]] = {}
    for node in onnx_model.graph.node:
        scopes: list[str] = []
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in ast.literal_eval(prop.value) if isinstance(s, str)]
                except (ValueError, SyntaxError):
                    scopes = []
        # the last entry is the op's own name, the first the root module ''
        out[node.name] = [s for s in scopes[:-1] if s]
    return out
