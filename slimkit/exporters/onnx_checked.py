"""ONNX export with a parity check, for an explicit quantizer or none: the step ``slimkit.exporters.export_model``
and :mod:`slimkit.exporters.quantized` both end in. Quantizers for ``quantize=ConfigType(...)`` register here
(:func:`register_onnx_quantizer`), like the safetensors codecs; a config class naming an ``exporter_module`` has
that module imported on first use."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, ExportError
from slimkit.exporters.onnx_export import export_onnx
from slimkit.exporters.parity import check_parity

__all__ = ["export_onnx_checked", "failed_path", "register_onnx_quantizer", "registered_quantizer"]

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


def registered_quantizer(quantize: Any) -> OnnxQuantizer | None:
    """The quantizer registered for ``type(quantize)``, importing the config's ``exporter_module`` if needed."""
    module = getattr(type(quantize), "exporter_module", "")
    if type(quantize) not in _ONNX_QUANTIZERS and isinstance(module, str) and module:
        importlib.import_module(module)
    return _ONNX_QUANTIZERS.get(type(quantize))


def failed_path(path: Path) -> Path:
    """Where an ONNX file that failed its parity check is moved: ``model.onnx`` -> ``model.parity-failed.onnx``."""
    return path.with_name(f"{path.stem}.parity-failed{path.suffix}")


@contextlib.contextmanager
def _set_aside_on_failure(path: Path) -> Iterator[None]:
    """On any error, move the file (and its ``.data``) to :func:`failed_path`, so nothing at ``path`` looks
    like a finished, checked export; an ExportError's hint says where the file went."""
    try:
        yield
    except Exception as exc:
        if not path.exists():
            raise
        bad = failed_path(path)
        os.replace(path, bad)
        data = path.with_name(path.name + ".data")
        if data.exists():
            os.replace(data, bad.with_name(bad.name + ".data"))
        if not isinstance(exc, ExportError):
            raise
        hint = f"{exc.hint + ' ' if exc.hint else ''}The failed file was moved to {bad} for inspection."
        raise ExportError(exc.message, hint=hint) from exc


def export_onnx_checked(model: nn.Module, path: Path, *, example_inputs: tuple[torch.Tensor, ...],
                        precision: str = "fp32", opset: int = 18, parity: bool = True, atol: float | None = None,
                        rtol: float | None = None, dynamic_batch: bool = True, quantize: Any = None,
                        calibration: Iterable[Any] | None = None) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (with ``quantize``: through that quantizer, see
    ``slimkit.exporters``) and check it against the model. Returns ``{"artifact", "format", "parity",
    "size_bytes"}``; a parity failure raises ExportError and moves the file to ``<stem>.parity-failed.onnx``.
    Call ``slimkit.export`` / ``export_model``, which routes quantized models first."""
    from slimkit.evaluation.cost import file_size

    result: dict[str, Any] = {"artifact": path, "format": "onnx", "parity": None}
    strict = True
    if quantize is not None:
        exporter = registered_quantizer(quantize)
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
        with _set_aside_on_failure(path):  # a file that fails its check is not left looking finished
            checks = [check_parity(model, path, x, atol=atol or tol, rtol=rtol or tol, strict=strict)
                      for x in _parity_inputs(example_inputs, dynamic_batch)]
        result["parity"] = _worst(checks)
    result["size_bytes"] = file_size(path)
    return result
