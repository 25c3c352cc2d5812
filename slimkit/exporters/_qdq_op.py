"""The ``slimkit::qdq`` custom op: fake quantization that torch's dynamo ONNX exporter writes as
``QuantizeLinear -> DequantizeLinear`` (through :data:`ONNX_TRANSLATION`).

torch's own ``fake_quantize_per_*_affine`` ops have no symbolic-shape support in ``torch.export`` (a
dynamic batch dimension fails), so the QDQ export of fake-quant models goes through this op instead.
No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the annotations.
"""

import torch

_NAMESPACE_OP = "slimkit::qdq"


@torch.library.custom_op(_NAMESPACE_OP, mutates_args=())
def qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, lo: int, hi: int) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x, scale, zero_point, axis))`` with the integer range ``[lo, hi]``
    (0..255 for a uint8 ``zero_point``, -128..127 for int8). Per tensor when ``scale`` has one element."""
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(), zero_point.reshape(()).int(),
                                                     lo, hi)
    return torch.fake_quantize_per_channel_affine(x, scale.float(), zero_point.int(), axis, lo, hi)


@qdq.register_fake
def _qdq_fake(x, scale, zero_point, axis, lo, hi):  # noqa: ANN001, ANN202 - signature fixed by the op
    return torch.empty_like(x)


def _qdq_onnx(x, scale, zero_point, axis: int, lo: int, hi: int):  # noqa: ANN001, ANN202
    from onnxscript import opset18 as op

    q = op.QuantizeLinear(x, scale, zero_point, axis=axis)
    return op.DequantizeLinear(q, scale, zero_point, axis=axis)


def onnx_translation() -> dict:
    """``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.slimkit.qdq.default: _qdq_onnx}
