"""Export: ONNX (fp32/fp16/int8) with a parity check, or safetensors + manifest (a directory) that a
structurally pruned model can be rebuilt from. :func:`export_model` (``slimkit.export``) is the one export
path: the recipe runner and the CLI call it too.

A model that holds quantization (what the quantize passes declare to the registry) goes through
:mod:`slimkit.exporters.quantized`: ``precision="int8"`` picks the int8 route from what the model holds
(its own QDQ scales after PTQ/QAT, else onnxruntime on its float equivalent), ``fp32``/``fp16`` export the
float equivalent. A float model asks for int8 with ``quantize=``:

- ``"auto"``: the same route as for a quantized model (onnxruntime static QDQ for convolutional models,
  dynamic for Linear-only ones), with the fp32 ONNX beside it for comparison;
- a config object whose type has a registered quantizer
  ``fn(model, path, *, example_inputs, config, calibration, opset) -> {"parity": ..., ...}``
  (:func:`register_onnx_quantizer`; a config class naming an ``exporter_module`` has it imported on first
  use, e.g. ``OrtInt8Config`` -> :mod:`slimkit.exporters.ort_int8`, which enforces its own parity floors);
- or a plain callable ``quantize(fp32_onnx, out_onnx, example_inputs) -> Path`` working on files: slimkit
  exports fp32, calls it, and reports parity of the result (not enforced: int8 is not fp32-exact).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.context import model_device
from slimkit.errors import ConfigError
from slimkit.exporters.onnx_checked import export_onnx_checked, register_onnx_quantizer
from slimkit.exporters.onnx_export import export_onnx
from slimkit.exporters.parity import check_parity
from slimkit.exporters.safetensors_io import load_manifest, load_model, load_state, save_model

log = logging.getLogger(__name__)

__all__ = ["check_parity", "export_model", "export_onnx", "load_manifest", "load_model", "load_state",
           "register_onnx_quantizer", "save_model"]

def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def export_model(model: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
                 precision: str = "fp32", opset: int = 18, parity: bool = True, atol: float | None = None,
                 rtol: float | None = None, dynamic_batch: bool = True, spec: dict[str, Any] | None = None,
                 quantize: Any = None, calibration: Iterable[Any] | None = None,
                 latency: Any = None) -> dict[str, Any]:
    """Export ``model`` and prove that the artifact matches it.

    ``path`` ending in ``.onnx``: ONNX at ``precision`` ("fp32", "fp16", "int8"; see the module docstring:
    int8 of a quantized model, or of a float one with ``quantize=``; static int8 needs ``calibration=``
    batches), parity checked in onnxruntime on the example inputs and, with a dynamic batch, on a batch of 3
    (``atol``/``rtol`` default 1e-3 for fp32, 1e-2 for fp16; a mismatch raises ExportError). A quantized
    model, or ``quantize="auto"``, returns the entry of
    :func:`slimkit.exporters.quantized.export_quantized_onnx` (for int8: the fp32 ONNX beside it, and with
    ``latency=`` a LatencyConfig, both onnxruntime latencies).
    Any other path is a directory: ``model.safetensors`` + ``manifest.json`` (``spec`` says how to
    rebuild), parity is an exact round trip of the state dict (of its quantized values where a codec
    stores weights quantized, see safetensors_io.encoded_state).

    A model on CUDA is exported to ONNX from a CPU copy (the model itself stays where it is).

    Returns ``{"artifact": Path, "size_bytes": int, "parity": dict | None, "format": "onnx"|"safetensors"}``.
    """
    from slimkit.evaluation.cost import file_size

    path = Path(path)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if path.suffix == ".onnx":
        if example_inputs is None:
            raise ConfigError("ONNX export needs example_inputs (a tensor or tuple of tensors, batch first).")
        example_inputs = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in example_inputs)
        if isinstance(model, nn.Module) and model_device(model).type != "cpu":
            import copy

            model = copy.deepcopy(model).cpu()  # ONNX is exported, and its parity checked, from a CPU copy
        if precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"unknown ONNX precision {precision!r}; expected 'fp32', 'fp16' or 'int8'.")
        if quantize is None or quantize == "auto":
            from slimkit.exporters.quantized import export_quantized_onnx, model_forms

            if quantize == "auto" or model_forms(model):
                return export_quantized_onnx(model, path, example_inputs=example_inputs, precision=precision,
                                             opset=opset, atol=atol, calibration=calibration, latency=latency)
            if precision == "int8":
                raise ConfigError(
                    "precision='int8' of a float model needs a quantizer: quantize it first (slimkit.quantize_), "
                    "or pass quantize='auto' (onnxruntime static QDQ for convolutions, with calibration=loader; "
                    "dynamic for Linear-only models), quantize=OrtInt8Config(...) or a callable.",
                    hint="OrtInt8Config lives in slimkit.config.quantize_ort (static QDQ or dynamic).")
        if quantize is not None:
            from slimkit.exporters.quantized import FakeQuantQDQ, float_copy, model_forms

            if not isinstance(quantize, FakeQuantQDQ) and model_forms(model):
                model = float_copy(model)  # another quantizer re-quantizes the float equivalent
        return export_onnx_checked(model, path, example_inputs=example_inputs, precision=precision, opset=opset,
                                   parity=parity, atol=atol, rtol=rtol, dynamic_batch=dynamic_batch,
                                   quantize=quantize, calibration=calibration)
    if path.suffix and not path.is_dir():
        raise ConfigError(f"export path {path} is neither an .onnx file nor a directory.",
                          hint="Use 'model.onnx' for ONNX or a directory name for safetensors + manifest.")
    weights = save_model(model, path, spec=spec)
    result = {"artifact": weights, "format": "safetensors", "size_bytes": file_size(weights), "parity": None}
    if parity:
        from slimkit.exporters.safetensors_io import encoded_state

        state = encoded_state(model) if isinstance(model, nn.Module) else dict(model)  # codecs: quantized values
        loaded = load_state(path)
        exact = set(state) == set(loaded) and all(_bitwise_equal(state[k], loaded[k]) for k in state)
        result["parity"] = {"round_trip_exact": exact, "ok": exact}
        if not exact:
            from slimkit.errors import ExportError

            raise ExportError(f"the safetensors round trip of {path} is not exact.", hint="Please report this bug.")
    return result
