"""Deployable ONNX from a (possibly quantized) model, as the runner's ``export`` section asks for it.

``export: {formats: [onnx], onnx: {precision: int8}}`` picks the int8 route from what the model holds:

- slimkit linear fake quantizers (``ptq``, ``qat``; up to 8 bits, per tensor or per channel): QDQ ONNX that
  carries the model's own (calibrated or learned) scales, weights stored as int8 codes
  (:func:`slimkit.exporters.onnx_qdq.export_qdq_from_fakequant`), parity against the fake-quant model;
- otherwise (a float model, ``dynamic``, ``weight-only``, ``fp16``/``bf16``, ``log``/``binary``) the float
  equivalent of the model (:func:`float_copy`: dequantized weights, quantizers removed) goes through
  onnxruntime.quantization: static QDQ with the recipe's calibration data when the model has convolutions,
  dynamic (MatMul/Gemm) when it is Linear-only. ``reduce_range`` is on only when this CPU lacks VNNI.

The returned export entry carries the int8 file's ``size_bytes``, ``parity`` and onnxruntime ``latency_ms``
next to the fp32 ONNX of the same network (``fp32``: size and latency, measured alternately in this
process) and a plain-words ``note`` saying whether int8 is faster here and why.

``precision: fp32|fp16`` of a quantized model exports :func:`float_copy` (a fake-quant graph has data-
dependent control flow that torch.export cannot trace); the entry's ``note`` says so.
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
from slimkit.exporters import register_onnx_quantizer
from slimkit.passes.quantize.fake_quant import FakeQuantize
from slimkit.passes.quantize.modules import quant_wrappers, unwrap

log = logging.getLogger(__name__)

__all__ = ["FakeQuantQDQ", "cpu_has_vnni", "deploy_onnx", "float_copy", "quant_kind"]


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
def _is_torchao(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and type(t).__module__.startswith("torchao")


def quant_kind(model: nn.Module) -> str | None:
    """What kind of quantization ``model`` holds: ``"fakequant"`` (linear fake quantizers only, QDQ-exportable),
    ``"fakequant-nonlinear"`` (log, binary or per-group quantizers), ``"packed"`` (weight-only packed layers),
    ``"torchao"`` (torchao int8 weights), ``"half"`` (fp16/bf16), or None for a float32 model."""
    from slimkit.passes.quantize.weight_only import PackedWeightLayer

    wrappers = list(quant_wrappers(model))
    if wrappers:
        for _, w in wrappers:
            for fq in (w.weight_fake_quant, w.input_fake_quant):
                if fq is not None and (not isinstance(fq, FakeQuantize) or fq.group_size is not None):
                    return "fakequant-nonlinear"
        return "fakequant"
    if any(isinstance(m, PackedWeightLayer) for m in model.modules()):
        return "packed"
    if any(_is_torchao(p) for p in model.parameters()):
        return "torchao"
    if getattr(model, "_slimkit_precision", None) or any(
            p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        return "half"
    return None


def float_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` that computes with its quantized weights (dequantized) and no quantizers:
    fake-quant wrappers are replaced by their layers with the fake-quantized weight baked in (input
    quantization is dropped), packed weight-only layers and torchao int8 weights are dequantized, fp16/bf16
    is cast back with its casting hooks removed. The input model is not modified."""
    from slimkit.passes.quantize.precision import remove_precision_hooks
    from slimkit.passes.quantize.weight_only import PackedWeightLayer

    m = copy.deepcopy(model)
    unwrap(m, bake=True)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, PackedWeightLayer):
            inner = mod.module
            inner.weight = nn.Parameter(mod.dequantized_weight().detach().float())
            m.set_submodule(name, inner)
    for mod in m.modules():
        w = getattr(mod, "weight", None)
        if _is_torchao(w):
            mod.weight = nn.Parameter(w.dequantize().detach().float(), requires_grad=False)
    remove_precision_hooks(m)
    return m.float().eval()


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# ------------------------------------------------------------------------------------------- export entry
def _paired_ort_latency(a: Path, b: Path, inputs: tuple[torch.Tensor, ...], cfg: Any,
                        rounds: int = 3) -> tuple[dict[str, Any], dict[str, Any]]:
    """onnxruntime latency of two files, alternated in this process (evaluation.latency.paired_latency)."""
    from slimkit.evaluation.latency import ort_latency, paired_latency

    return paired_latency(lambda: ort_latency(a, inputs, cfg), lambda: ort_latency(b, inputs, cfg), rounds=rounds)


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


def deploy_onnx(model: nn.Module, path: str | Path, *, example_inputs: tuple[torch.Tensor, ...], precision: str,
                opset: int, atol: float, calibration: Iterable[Any] | None, latency: Any) -> dict[str, Any]:
    """Export ``model`` for a recipe's ``export.onnx`` section to ``path`` (int8: the fp32 comparison beside it,
    ``<stem>.fp32.onnx``; see the module docstring) and return the report's export entry (artifacts are file
    names, relative to ``path``'s directory)."""
    from slimkit.config.quantize_ort import OrtInt8Config
    from slimkit.exporters import export_model
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    path = Path(path)
    kind = quant_kind(model)
    if precision != "int8":
        res = export_model(float_copy(model), path, example_inputs=example_inputs, precision=precision,
                           opset=opset, atol=atol)
        if kind == "half":
            note = (f"exported as ONNX {precision} from the float32 copy of the half-precision model (its input/output "
                    "casting hooks do not export).")
        else:
            note = (f"the model holds {kind} quantization, which ONNX {precision} cannot express: exported its float "
                    "equivalent (quantized weights dequantized, activation quantizers dropped); ask for "
                    "precision: int8 for a quantized ONNX.")
        return {"format": "onnx", "precision": precision, "artifact": path.name, "size_bytes": res["size_bytes"],
                "parity": res["parity"], "source": f"float copy of the {kind} model", "note": note}
    vnni = cpu_has_vnni()
    floating = float_copy(model)
    if kind == "fakequant":
        route, target, quantize = "fakequant-qdq", model, FakeQuantQDQ()
    elif _has_conv(floating):
        if calibration is None:
            raise ConfigError("int8 ONNX of a convolutional model needs calibration data (static QDQ); the "
                              "recipe's data section gives none.")
        route, target = "onnxruntime-static", floating
        quantize = OrtInt8Config(mode="static", reduce_range=vnni is False)
    else:
        route, target = "onnxruntime-dynamic", floating
        quantize = OrtInt8Config(mode="dynamic", reduce_range=vnni is False)
    res = export_model(target, path, example_inputs=example_inputs, precision="int8", opset=opset,
                       quantize=quantize, calibration=calibration)
    fp32_path = path.with_name(f"{path.stem}.fp32.onnx")
    fp32 = export_model(floating, fp32_path, example_inputs=example_inputs, precision="fp32", opset=opset,
                        atol=atol)
    fp32_bytes = onnx_size_bytes(fp32_path)
    lat = lat32 = None
    if latency is not None:
        lat, lat32 = _paired_ort_latency(path, fp32_path, example_inputs, latency)
    ratio = (lat32["median"] / lat["median"]) if lat and lat32 and lat["median"] > 0 else None
    size = onnx_size_bytes(path)
    note = _speed_note(ratio, vnni, route, _has_conv(floating))
    if kind in ("fakequant-nonlinear",):
        note += (" The model's log/binary/per-group weights have no int8 QDQ form: onnxruntime re-quantized "
                 "their float values to linear int8.")
    log.info("int8 ONNX (%s): %d bytes (%.1f%% of fp32 ONNX); %s", route, size, 100 * size / fp32_bytes, note)
    return {
        "format": "onnx", "precision": "int8", "route": route, "artifact": path.name, "size_bytes": size,
        "size_ratio": size / fp32_bytes, "parity": {**res["parity"], "ok": res["parity"].get("ok", True)},
        "latency_ms": lat, "speedup_vs_fp32": ratio,
        "fp32": {"artifact": fp32_path.name, "size_bytes": fp32_bytes, "latency_ms": lat32,
                 "parity": fp32["parity"]},
        "quantize": quantize.model_dump(mode="json") if hasattr(quantize, "model_dump") else quantize.__dict__,
        "cpu_vnni": vnni, "note": note,
    }

