"""Export: ONNX (fp32/fp16, int8 through a quantizer) with a parity check, or safetensors + manifest
(a directory) that a structurally pruned model can be rebuilt from.

int8 is an extension point, ``export_model(..., quantize=...)``:

- a config object whose type has a registered full exporter
  ``fn(model, path, *, example_inputs, config, calibration, opset) -> {"parity": ..., ...}``
  (``OrtInt8Config`` is pre-registered lazily: ``slimkit.passes.quantize.ort.export_int8_onnx``, which
  enforces its own top-1/cosine parity floors); register others with :func:`register_onnx_quantizer`;
- or a plain callable ``quantize(fp32_onnx, out_onnx, example_inputs) -> Path`` working on files: slimkit
  exports fp32, calls it, and reports parity of the result (not enforced: int8 is not fp32-exact).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, ExportError
from slimkit.exporters.onnx_export import export_onnx
from slimkit.exporters.parity import check_parity
from slimkit.exporters.safetensors_io import load_manifest, load_model, load_state, save_model

log = logging.getLogger(__name__)

__all__ = ["check_parity", "export_model", "export_onnx", "load_manifest", "load_model", "load_state",
           "register_onnx_quantizer", "save_model"]

OnnxQuantizer = Callable[..., dict[str, Any]]
_ONNX_QUANTIZERS: dict[type, OnnxQuantizer] = {}
_DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 1e-2}


def register_onnx_quantizer(config_type: type) -> Callable[[OnnxQuantizer], OnnxQuantizer]:
    """Register a full int8 exporter for ``quantize=config_type(...)``:
    ``fn(model, path, *, example_inputs, config, calibration, opset) -> dict`` with a ``"parity"`` entry."""
    def deco(fn: OnnxQuantizer) -> OnnxQuantizer:
        _ONNX_QUANTIZERS[config_type] = fn
        return fn
    return deco


def _parity_inputs(example_inputs: tuple[torch.Tensor, ...], dynamic_batch: bool) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs, plus a batch of 3 when the batch is dynamic (proves the dynamic axis)."""
    out = [example_inputs]
    if dynamic_batch and all(t.dim() > 0 for t in example_inputs):
        from slimkit.evaluation.latency import batched

        out.append(batched(example_inputs, 3))
    return out


def _worst(results: list[dict[str, Any]]) -> dict[str, Any]:
    def key(r: dict[str, Any]) -> float:
        return float("inf") if r["max_abs_diff"] is None else r["max_abs_diff"]
    worst = dict(max(results, key=key))
    worst["ok"] = all(r["ok"] for r in results)
    return worst


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def _registered_exporter(quantize: Any) -> OnnxQuantizer | None:
    """The full exporter registered for ``type(quantize)`` (OrtInt8Config resolves lazily)."""
    if type(quantize) not in _ONNX_QUANTIZERS and type(quantize).__name__ == "OrtInt8Config":
        from slimkit.config.quantize_ort import OrtInt8Config

        if isinstance(quantize, OrtInt8Config):
            from slimkit.passes.quantize.ort import export_int8_onnx

            _ONNX_QUANTIZERS[OrtInt8Config] = export_int8_onnx
    return _ONNX_QUANTIZERS.get(type(quantize))


def failed_path(path: Path) -> Path:
    """Where an ONNX file that failed its parity check is moved: ``model.onnx`` -> ``model.parity-failed.onnx``."""
    return path.with_name(f"{path.stem}.parity-failed{path.suffix}")


@contextlib.contextmanager
def _set_aside_on_failure(path: Path) -> Iterator[None]:
    """On an ExportError, move the file (and its ``.data``) to :func:`failed_path`, so nothing at ``path``
    looks like a finished, checked export; the error says where the file went."""
    try:
        yield
    except ExportError as exc:
        if not path.exists():
            raise
        bad = failed_path(path)
        os.replace(path, bad)
        data = path.with_name(path.name + ".data")
        if data.exists():
            os.replace(data, bad.with_name(bad.name + ".data"))
        hint = f"{exc.hint + ' ' if exc.hint else ''}The failed file was moved to {bad} for inspection."
        raise ExportError(exc.message, hint=hint) from exc


def export_model(model: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
                 precision: str = "fp32", opset: int = 18, parity: bool = True, atol: float | None = None,
                 rtol: float | None = None, dynamic_batch: bool = True, spec: dict[str, Any] | None = None,
                 quantize: Any = None, calibration: Iterable[Any] | None = None) -> dict[str, Any]:
    """Export ``model`` and prove that the artifact matches it.

    ``path`` ending in ``.onnx``: ONNX at ``precision`` ("fp32", "fp16"; "int8" needs ``quantize=``, and
    static int8 ``calibration=`` batches; see the module docstring),
    parity checked in onnxruntime on the example inputs and, with a dynamic batch, on a batch of 3
    (``atol``/``rtol`` default 1e-3 for fp32, 1e-2 for fp16; a mismatch raises ExportError and moves the file
    to ``<stem>.parity-failed.onnx``, so no unchecked file is left under the requested name).
    Any other path is a directory: ``model.safetensors`` + ``manifest.json`` (``spec`` says how to
    rebuild), parity is an exact round trip of the state dict (of its quantized values where a codec
    stores weights quantized, see safetensors_io.encoded_state).

    Returns ``{"artifact": Path, "size_bytes": int, "parity": dict | None, "format": "onnx"|"safetensors"}``.
    """
    from slimkit.evaluation.cost import file_size

    path = Path(path)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if path.suffix == ".onnx":
        if example_inputs is None:
            raise ConfigError("ONNX export needs example_inputs (a tensor or tuple of tensors, batch first).")
        example_inputs = tuple(example_inputs)
        if precision == "int8" and quantize is None:
            raise ConfigError("precision='int8' needs a quantizer: export_model(..., quantize=OrtInt8Config(), "
                              "calibration=loader).",
                              hint="OrtInt8Config lives in slimkit.config.quantize_ort (static QDQ or dynamic).")
        if precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"unknown ONNX precision {precision!r}; expected 'fp32', 'fp16' or 'int8'.")
        result: dict[str, Any] = {"artifact": path, "format": "onnx", "parity": None}
        strict = True
        if quantize is not None:
            exporter = _registered_exporter(quantize)
            if exporter is not None:
                with _set_aside_on_failure(path):
                    art = exporter(model, path, example_inputs=example_inputs, config=quantize,
                                   calibration=calibration, opset=opset)
                return {**result, "parity": art.get("parity"), "size_bytes": file_size(path)}
            if not callable(quantize):
                raise ConfigError(f"quantize={type(quantize).__name__} has no ONNX quantizer.",
                                  hint="Pass OrtInt8Config() (slimkit.config.quantize_ort), a config registered "
                                       "with register_onnx_quantizer, or a callable quantize(fp32, out, inputs).")
            fp32 = path.with_name(path.stem + ".fp32.onnx")
            export_onnx(model, fp32, example_inputs, opset=opset, dynamic_batch=dynamic_batch, precision="fp32")
            try:
                quantize(fp32, path, example_inputs)
            finally:
                for p in (fp32, fp32.with_name(fp32.name + ".data")):
                    p.unlink(missing_ok=True)
            strict = False
        else:
            export_onnx(model, path, example_inputs, opset=opset, dynamic_batch=dynamic_batch, precision=precision)
        if parity:
            tol = _DEFAULT_ATOL.get("int8" if quantize is not None else precision, 1e-1)
            with _set_aside_on_failure(path):
                checks = [check_parity(model, path, x, atol=atol or tol, rtol=rtol or tol, strict=strict)
                          for x in _parity_inputs(example_inputs, dynamic_batch)]
            result["parity"] = _worst(checks)
        result["size_bytes"] = file_size(path)
        return result
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
            raise ExportError(f"the safetensors round trip of {path} is not exact.", hint="Please report this bug.")
    return result
