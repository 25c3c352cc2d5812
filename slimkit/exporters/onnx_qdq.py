"""QDQ ONNX from a slimkit fake-quant model (PTQ or QAT), carrying the model's own scales and zero points.

How: each linear fake-quantizer of the model is swapped, on a deep copy, for the equivalent
``torch.fake_quantize_per_tensor_affine`` / ``per_channel_affine`` call, which torch's ONNX exporter
writes as ``QuantizeLinear -> DequantizeLinear``. Those ops only take 8-bit ranges, so a quantizer with
fewer bits is written as an 8-bit container of the same scale and zero point: weights are snapped to
their grid first (so they stay on it exactly), activations are clipped to the narrow range first (``Clip``
then ``Q``, which equals clamping the integer). After export, every ``QuantizeLinear`` of a constant weight
is folded: the weight is stored as its integer codes (int8), feeding ``DequantizeLinear`` directly, so the
file holds 1 byte per weight and onnxruntime fuses ``DQ -> Conv/Gemm -> Q`` into integer kernels where an
output quantizer follows.

Log and binary quantizers have no QDQ form; they raise ConfigError naming the layer.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

_ONNX_INT = {2: np.uint8, 3: np.int8}  # TensorProto.UINT8, INT8


def fold_weight_quantize(proto: Any) -> int:
    """Replace ``QuantizeLinear(W)`` of constant weights by integer initializers in ``proto`` (in place).
    Returns how many were folded. Unused float initializers are removed."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    folded, remove, renames = 0, [], {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        x = value(node.input[0])
        scale = value(node.input[1]) if len(node.input) > 1 else None
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if x is None or scale is None or x.dtype.kind != "f":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zdtype = zp.dtype if zp is not None else np.dtype(np.uint8)
        info = np.iinfo(zdtype)
        s = scale.astype(np.float64)
        z = (zp if zp is not None else np.zeros_like(scale, dtype=zdtype)).astype(np.float64)
        if s.ndim == 1 and s.size > 1:
            shape = [1] * x.ndim
            shape[axis % x.ndim] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        q = np.clip(np.rint(x.astype(np.float64) / s) + z, info.min, info.max).astype(zdtype)
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(q, name))
        renames[node.output[0]] = name
        remove.append(node)
        folded += 1
    for node in remove:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in list(graph.initializer):
        if t.name not in used:
            graph.initializer.remove(t)
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] not in used:
            graph.node.remove(node)
    return folded


# ----------------------------------------------------------------------------------------- model side

class _QDQ(nn.Module):
    """Export stand-in for one linear fake-quantizer: an 8-bit container QDQ (``slimkit::qdq``) with the
    quantizer's scale and zero point; a narrower range is clipped first when ``clip``."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None,
                 name: str, clip: bool = True) -> None:
        super().__init__()
        lo, hi = (0, 255) if qmin >= 0 else (-128, 127)
        if qmin < lo or qmax > hi:
            raise ConfigError(f"layer '{name}': quantizer range [{qmin}, {qmax}] does not fit in 8 bits.")
        zp = zero_point.detach().round()
        if torch.any(zp < lo) or torch.any(zp > hi):
            raise ConfigError(f"layer '{name}': zero point outside the 8-bit range [{lo}, {hi}].")
        per_channel = scale.numel() > 1
        self.register_buffer("scale", scale.detach().float().reshape(-1 if per_channel else ()).clone())
        self.register_buffer("zero_point", zp.reshape(self.scale.shape).to(torch.uint8 if lo == 0 else torch.int8))
        self.lo, self.hi, self.axis = lo, hi, (axis if per_channel and axis is not None else 1)
        self.clip_range: tuple[Any, Any] | None = None
        if clip and (qmin, qmax) != (lo, hi):
            s, z = scale.detach().float(), zp.float()
            if per_channel:
                raise ConfigError(f"layer '{name}': per-channel activation quantizers below 8 bits cannot be "
                                  "exported.", hint="Use per-tensor activation quantizers.")
            self.clip_range = (float(s * (qmin - z)), float(s * (qmax - z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip_range is not None:
            x = torch.clamp(x, *self.clip_range)
        return torch.ops.slimkit.qdq(x, self.scale, self.zero_point, self.axis, self.lo, self.hi)


def _linear_qparams(q: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor, int, int, int | None] | None:
    """(scale, zero_point, qmin, qmax, axis) of one of slimkit's linear fake-quantizers
    (:class:`slimkit.passes.quantize.fake_quant.FakeQuantize`); None when it is off (a pass-through).
    Log, binary and per-group quantizers have no QDQ form: ConfigError naming the layer."""
    kind = type(q).__name__
    if kind in ("LogFakeQuantize", "BinaryFakeQuantize", "SignActivation"):
        raise ConfigError(f"layer '{name}' uses a {kind}: logarithmic and binary quantization have no QDQ "
                          "(linear int8) form in ONNX.",
                          hint="Export it as float (slimkit.export without quantize=) or keep the layer linear "
                               "(skip=[...] in LogQuantConfig/BinaryConfig).")
    if getattr(q, "group_size", None) is not None:
        raise ConfigError(f"layer '{name}' quantizes its weight per group (group_size={q.group_size}); "
                          "QDQ ONNX at this opset holds per-tensor or per-channel scales only.",
                          hint="Use per-channel weights (group_size=None) for the ONNX artifact.")
    scale, zp = getattr(q, "scale", None), getattr(q, "zero_point", None)
    qmin, qmax = getattr(q, "qmin", None), getattr(q, "qmax", None)
    if not isinstance(scale, torch.Tensor) or qmin is None or qmax is None:
        raise ConfigError(f"layer '{name}': {kind} exposes no scale/zero_point/qmin/qmax to export.")
    enabled = getattr(q, "fake_quant_enabled", None)
    initialized = getattr(q, "initialized", None)
    if (enabled is not None and not bool(enabled)) or (initialized is not None and not bool(initialized)):
        return None
    zp = torch.zeros_like(scale) if zp is None else zp
    axis = getattr(q, "axis", None) if scale.numel() > 1 else None
    return scale.detach().float(), zp.detach().float(), int(qmin), int(qmax), axis


def _swap_quantizers(model: nn.Module) -> int:
    """Replace the fake-quantizers of every slimkit ``QuantWrapper`` in ``model`` (a copy) by export stand-ins:
    weights are snapped to their grid and re-quantized by an 8-bit QDQ with the same scale; input quantizers
    become (Clip +) QDQ. Returns how many quantizers were swapped."""
    from slimkit.passes.quantize.modules import quant_wrappers

    swapped = 0
    for name, w in list(quant_wrappers(model)):
        wfq, ifq = w.weight_fake_quant, w.input_fake_quant
        if wfq is not None:
            qp = _linear_qparams(wfq, name)
            if qp is None:
                w.weight_fake_quant = None
            else:
                scale, zp, qmin, qmax, axis = qp
                from slimkit.passes.quantize.qscheme import fake_quantize

                with torch.no_grad():
                    w.module.weight.copy_(fake_quantize(w.module.weight, scale, zp, qmin, qmax, axis))
                w.weight_fake_quant = _QDQ(scale, zp, qmin, qmax, axis, name, clip=False)
                swapped += 1
        if ifq is not None:
            qp = _linear_qparams(ifq, f"{name} (input)")
            if qp is None:
                w.input_fake_quant = None
            else:
                w.input_fake_quant = _QDQ(*qp, name=f"{name} (input)", clip=True)
                swapped += 1
    return swapped


def export_qdq_from_fakequant(model: nn.Module, path: str | Path, example_inputs: Sequence[torch.Tensor], *,
                              opset: int = 18, dynamic_batch: bool = True, fold_weights: bool = True) -> Path:
    """Export a slimkit fake-quant model (after PTQ calibration or QAT) to QDQ ONNX that carries the model's
    learned scales and zero points, with weights stored as int8 codes. The model is not modified.

    Raises ConfigError when the model holds no linear fake-quantizer (quantize it first) or holds log/binary
    quantizers (no QDQ form), ExportError when export fails or onnxruntime cannot load the result."""
    from slimkit.exporters._qdq_op import onnx_translation
    from slimkit.exporters.onnx_int8 import (
        check_ort_loads,
        export_fp32_onnx,
        load_onnx,
        save_onnx_single_file,
    )

    m = copy.deepcopy(model).eval()
    swapped = _swap_quantizers(m)
    if not swapped:
        raise ConfigError(f"{type(model).__name__} holds no fake-quant modules, so there are no scales to export.",
                          hint="Run slimkit.quantize_(model, PTQConfig(...), calibration=...) or QATConfig first, "
                               "or quantize the fp32 ONNX with quantize_onnx(...).")
    with tempfile.TemporaryDirectory(prefix="slimkit-qdq-") as td:
        tmp = Path(td) / "qdq.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_fp32_onnx(m, tmp, example_inputs, opset=opset, dynamic_batch=dynamic_batch,
                             custom_translation_table=onnx_translation())
        proto = load_onnx(tmp)
        n_q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        if n_q == 0:
            raise ExportError("the exported graph holds no QuantizeLinear nodes although the model has "
                              f"{swapped} fake-quantizers.", hint="Report this as a bug with the model.")
        folded = fold_weight_quantize(proto) if fold_weights else 0
        out = save_onnx_single_file(proto, Path(path))
    check_ort_loads(out)
    log.info("QDQ ONNX %s: %d quantizers, %d weights stored as int8", out, swapped, folded)
    return out
