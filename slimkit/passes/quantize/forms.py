"""Export forms shared by several quantize passes (fake quantizers, torchao int8 weights), declared to the
registry with ``register_pass(..., export=...)``; a form used by one pass lives in its handler module
(``weight_only.PACKED``, ``precision.HALF``).

Each :class:`slimkit.registry.ExportForm` says how to recognise the form, how to turn it into its float32
equivalent (for fp32/fp16 ONNX and for onnxruntime re-quantization) and whether int8 ONNX can carry the
model's own scales (QDQ). The exporters read these forms from the registry; they name no pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.passes.quantize.fake_quant import FakeQuantize
from slimkit.passes.quantize.modules import QuantWrapper, quant_wrappers, unwrap
from slimkit.registry import ExportForm

_FAKE_QUANT_LATENCY = (
    "The PyTorch latency above is of the fake-quantized model, which simulates low precision with extra "
    "quantize-dequantize steps in float, so it is slower than the float model by design; the deployable "
    "speed is the exported artifact's.")


def _nonlinear(w: QuantWrapper) -> bool:
    """Whether a wrapper holds a quantizer int8 QDQ cannot express (log, binary, per-group)."""
    return any(fq is not None and (not isinstance(fq, FakeQuantize) or fq.group_size is not None)
               for fq in (w.weight_fake_quant, w.input_fake_quant))


def _linear_fakequant(model: nn.Module) -> bool:
    wrappers = [w for _, w in quant_wrappers(model)]
    return bool(wrappers) and not any(_nonlinear(w) for w in wrappers)


def _nonlinear_fakequant(model: nn.Module) -> bool:
    return any(_nonlinear(w) for _, w in quant_wrappers(model))


def _bake(model: nn.Module) -> None:
    unwrap(model, bake=True)


def _is_torchao(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and type(t).__module__.startswith("torchao")


def _has_torchao(model: nn.Module) -> bool:
    return any(_is_torchao(p) for p in model.parameters())


def _dequantize_torchao(model: nn.Module) -> None:
    for mod in model.modules():
        w: Any = getattr(mod, "weight", None)
        if _is_torchao(w):
            mod.weight = nn.Parameter(w.dequantize().detach().float(), requires_grad=False)


FAKEQUANT = ExportForm(
    "fakequant", _linear_fakequant, _bake, int8="qdq", runtime_note=_FAKE_QUANT_LATENCY)
"""Linear fake quantizers (PTQ, QAT; up to 8 bits, per tensor or per channel): QDQ ONNX with their scales."""

FAKEQUANT_NONLINEAR = ExportForm(
    "fakequant-nonlinear", _nonlinear_fakequant, _bake, runtime_note=_FAKE_QUANT_LATENCY,
    note="The model's log/binary/per-group weights have no int8 QDQ form: onnxruntime re-quantized their "
         "float values to linear int8.")
"""Log, binary or per-group fake quantizers: int8 ONNX re-quantizes their dequantized weights."""


TORCHAO = ExportForm("torchao", _has_torchao, _dequantize_torchao)
"""torchao int8 weights (dynamic and weight-only int8)."""
