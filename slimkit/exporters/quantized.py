"""ONNX of a (possibly) quantized model: the route ``slimkit.export(..., precision=...)`` takes when the model
holds quantization or int8 is asked for. The recipe runner and the CLI call the same function.

What a model holds is read from the registry (:func:`slimkit.registry.export_forms`: each quantize pass
declares the :class:`~slimkit.registry.ExportForm` it leaves), so this module names no pass:

- ``precision="int8"``: a form whose ``int8`` is ``"qdq"`` (linear fake quantizers of PTQ/QAT, up to 8 bits,
  per tensor or per channel) exports QDQ ONNX that carries the model's own (calibrated or learned) scales,
  weights stored as int8 codes (:class:`FakeQuantQDQ`), parity against the fake-quant model; any other model
  (float, dynamic, weight-only, fp16/bf16, log/binary, per-group) has its float equivalent
  (:func:`float_copy`) quantized by onnxruntime: static QDQ with calibration data when it has convolutions,
  dynamic (MatMul/Gemm) when it is Linear-only; ``reduce_range`` only when this CPU lacks VNNI. The fp32 ONNX
  of the same network is written beside it (``<stem>.fp32.onnx``) and the entry reports both sizes and, with
  ``latency=``, both onnxruntime latencies measured alternately in this process, with a plain-words note
  saying whether int8 is faster here and why.
- ``precision="fp32"|"fp16"`` of a quantized model exports :func:`float_copy` (a fake-quant graph has
  data-dependent control flow that torch.export cannot trace); the entry's ``note`` says so.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError
from slimkit.evaluation.latency import cpu_has_vnni
from slimkit.exporters.onnx_checked import export_onnx_checked, register_onnx_quantizer
from slimkit.registry import ExportForm, export_forms

log = logging.getLogger(__name__)

__all__ = ["FakeQuantQDQ", "cpu_has_vnni", "export_quantized_onnx", "float_copy", "model_forms", "quant_kind"]


@dataclass(frozen=True)
class FakeQuantQDQ:
    """``slimkit.export(model, "m.onnx", quantize=FakeQuantQDQ())``: QDQ ONNX from a slimkit fake-quant model
    carrying its scales; parity against the fake-quant model must reach these floors."""

    parity_min_top1: float | None = 0.9
    parity_min_cosine: float | None = 0.98
    parity_batches: int = 4


@register_onnx_quantizer(FakeQuantQDQ)
def _export_fakequant_qdq(model: nn.Module, path: Path, *, example_inputs: tuple[torch.Tensor, ...],
                          config: FakeQuantQDQ, calibration: Iterable[Any] | None, opset: int) -> dict[str, Any]:
    from slimkit.exporters.onnx_int8 import int8_parity
    from slimkit.exporters.onnx_qdq import export_qdq_from_fakequant

    export_qdq_from_fakequant(model, path, example_inputs, opset=opset)
    batches = list(itertools.islice(iter(calibration), config.parity_batches)) if calibration is not None else []
    parity = int8_parity(path, model, batches or [(example_inputs, None)], min_top1=config.parity_min_top1,
                         min_cosine=config.parity_min_cosine)
    return {"parity": {**parity, "ok": True, "reference": "pytorch fake-quant model"}}


# ------------------------------------------------------------------------------------- what the model holds
def model_forms(model: nn.Module) -> list[ExportForm]:
    """The registered forms ``model`` holds (empty for a plain float32 model)."""
    return [f for f in export_forms() if f.detect(model)]


def quant_kind(model: nn.Module) -> str | None:
    """The name of the first form ``model`` holds (``"fakequant"``, ``"fakequant-nonlinear"``, ``"packed"``,
    ``"torchao"``, ``"half"``, or another pass's), or None for a float32 model."""
    forms = model_forms(model)
    return forms[0].name if forms else None


def float_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` that computes with its quantized weights (dequantized) and no quantizers:
    each form it holds is replaced by its float equivalent. The input model is not modified."""
    m = copy.deepcopy(model)
    for form in model_forms(m):
        form.to_float(m)
    return m.float().eval()


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# ------------------------------------------------------------------------------------------- export entry
def _speed_note(ratio: float | None, vnni: bool | None, route: str, has_conv: bool) -> str:
    if ratio is None:
        return "latency not measured (the recipe has no evaluate.latency section)."
    isa = {True: "this CPU has VNNI (avx512_vnni/avx_vnni int8 dot products)",
           False: "this CPU has no VNNI, so int8 GEMMs use AVX2 vpmaddubsw with reduce_range",
           None: "whether this CPU has VNNI is unknown"}[vnni]
    if ratio >= 1.1:
        return f"int8 ONNX is {ratio:.2f}x faster than fp32 ONNX in onnxruntime; {isa}."
    why = ("for a model this small the quantize/dequantize steps at the float boundaries cost about as much as "
           "the integer kernels save" if route != "onnxruntime-dynamic" else
           "dynamic int8 quantizes activations on every call, which costs about as much as it saves at this size")
    if not has_conv and route == "onnxruntime-dynamic":
        why += " (Linear-only model)"
    return f"int8 ONNX is not faster than fp32 ONNX here ({ratio:.2f}x): {why}; {isa}."


def _float_entry(model: nn.Module, forms: list[ExportForm], path: Path, **kw: Any) -> dict[str, Any]:
    precision = kw["precision"]
    res = export_onnx_checked(float_copy(model), path, **kw)
    kind = forms[0].name
    note = forms[0].float_note.format(precision=precision) or (
        f"the model holds {kind} quantization, which ONNX {precision} cannot express: exported its float "
        "equivalent (quantized weights dequantized, activation quantizers dropped); ask for precision: int8 for "
        "a quantized ONNX.")
    return {"format": "onnx", "precision": precision, "artifact": path, "size_bytes": res["size_bytes"],
            "parity": res["parity"], "source": f"float copy of the {kind} model", "note": note}


def export_quantized_onnx(model: nn.Module, path: str | Path, *, example_inputs: tuple[torch.Tensor, ...],
                          precision: str = "int8", opset: int = 18, atol: float | None = None,
                          calibration: Iterable[Any] | None = None, latency: Any = None) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``precision`` by what it holds (module docstring) and return the export
    entry: ``artifact`` (``path``), ``size_bytes``, ``parity``, ``note``; for int8 also ``route``,
    ``size_ratio``, ``latency_ms``, ``speedup_vs_fp32``, ``fp32`` (``artifact``, ``size_bytes``,
    ``latency_ms``, ``parity`` of ``<stem>.fp32.onnx``), ``quantize`` (the quantizer's settings), ``cpu_vnni``.
    Reached through ``slimkit.export``; call that."""
    from slimkit.config.quantize_ort import OrtInt8Config
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    path = Path(path)
    forms = model_forms(model)
    if precision != "int8":
        return _float_entry(model, forms, path, example_inputs=example_inputs, precision=precision, opset=opset,
                            atol=atol)
    vnni = cpu_has_vnni()
    floating = float_copy(model)
    quantize: Any
    if forms and forms[0].int8 == "qdq":
        route, target, quantize = f"{forms[0].name}-qdq", model, FakeQuantQDQ()
    elif _has_conv(floating):
        if calibration is None:
            raise ConfigError("int8 ONNX of a convolutional model needs calibration data (static QDQ), but "
                              "calibration=None.", hint="Pass calibration=loader (in a recipe: a data section).")
        route, target = "onnxruntime-static", floating
        quantize = OrtInt8Config(mode="static", reduce_range=vnni is False)
    else:
        from slimkit.models.sentence import SentenceEncoder

        route, target = "onnxruntime-dynamic", floating
        # an embedding has no classes: its parity is the output cosine alone (top-1 of an embedding is noise)
        top1 = {"parity_min_top1": None} if isinstance(floating, SentenceEncoder) else {}
        quantize = OrtInt8Config(mode="dynamic", reduce_range=vnni is False, **top1)
    res = export_onnx_checked(target, path, example_inputs=example_inputs, precision="int8", opset=opset,
                              quantize=quantize, calibration=calibration)
    fp32_path = path.with_name(f"{path.stem}.fp32.onnx")
    fp32 = export_onnx_checked(floating, fp32_path, example_inputs=example_inputs, precision="fp32", opset=opset,
                               atol=atol)
    fp32_bytes = onnx_size_bytes(fp32_path)
    lat = lat32 = None
    if latency is not None:
        from slimkit.evaluation.latency import ort_compare

        timed = ort_compare({"int8": path, "fp32": fp32_path}, example_inputs, latency, rounds=3)
        lat, lat32 = timed["int8"], timed["fp32"]
    ratio = (lat32["median"] / lat["median"]) if lat and lat32 and lat["median"] > 0 else None
    size = onnx_size_bytes(path)
    note = _speed_note(ratio, vnni, route, _has_conv(floating))
    note += "".join(f" {f.note}" for f in forms if f.note and f.int8 != "qdq")
    log.info("int8 ONNX (%s): %d bytes (%.1f%% of fp32 ONNX); %s", route, size, 100 * size / fp32_bytes, note)
    return {
        "format": "onnx", "precision": "int8", "route": route, "artifact": path, "size_bytes": size,
        "size_ratio": size / fp32_bytes, "parity": {**res["parity"], "ok": res["parity"].get("ok", True)},
        "latency_ms": lat, "speedup_vs_fp32": ratio,
        "fp32": {"artifact": fp32_path, "size_bytes": fp32_bytes, "latency_ms": lat32, "parity": fp32["parity"]},
        "quantize": quantize.model_dump(mode="json") if hasattr(quantize, "model_dump") else quantize.__dict__,
        "cpu_vnni": vnni, "note": note,
    }
