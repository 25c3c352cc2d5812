"""Config of the deployable int8 ONNX artifact made by onnxruntime.quantization.

Not a model pass (it works on the exported ONNX file, not on the ``nn.Module``): it is given to
``slimkit.export(model, "m.onnx", example_inputs=x, quantize=OrtInt8Config(), calibration=loader)``, whose
quantizer for it is registered by ``exporter_module`` (:mod:`slimkit.exporters.ort_int8`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import StrictModel

OrtOpType = Literal["Conv", "MatMul", "Gemm", "Gather", "ConvTranspose", "Add", "Mul", "Relu", "MaxPool",
                    "AveragePool", "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Softmax",
                    "Resize", "Split", "Squeeze", "Unsqueeze", "Sigmoid", "LeakyRelu", "Clip", "Where",
                    "LayerNormalization", "Pad"]


class OrtInt8Config(StrictModel):
    """int8 ONNX through onnxruntime.quantization.

    mode: ``static`` (QDQ with calibrated activation ranges; the choice for convolutional models) or
        ``dynamic`` (int8 weights, activations quantized at run time; for Linear/MatMul-heavy models).
    per_channel: one weight scale per output channel (more accurate for convolutions).
    reduce_range: 7-bit weights, so u8s8 kernels cannot saturate on x86 CPUs without VNNI (onnxruntime's
        advice for such CPUs); costs a little accuracy where VNNI is present.
    activation_type / weight_type: ``uint8``/``int8`` is u8s8 (the fast x86 path), ``int8``/``int8`` is s8s8.
    calibrate_method: how activation ranges are found (minmax, entropy, percentile, distribution).
    op_types: ONNX op types to quantize; ``None`` means every op onnxruntime supports (static) or
        MatMul/Gemm/Gather (dynamic). Add ``Gather`` for embedding tables.
    calibration_batches: at most this many calibration batches are read (static only).
    nodes_to_exclude: ONNX node names kept in float (sensitive layers).
    compact: a smaller file that computes the same and runs the same kernels (float biases in static QDQ,
        short tensor names, no all-zero weight zero points before Conv, shared scalars); see
        ``slimkit.exporters.onnx_compact``. ``False`` keeps onnxruntime's readable names and int32 biases.
    parity_min_top1 / parity_min_cosine: the exported int8 model must agree this well with the PyTorch model
        on the calibration inputs, else ExportError.
    """

    exporter_module: ClassVar[str] = "slimkit.exporters.ort_int8"
    mode: Literal["static", "dynamic"] = "static"
    per_channel: bool = True
    reduce_range: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    calibrate_method: Literal["minmax", "entropy", "percentile", "distribution"] = "minmax"
    op_types: list[OrtOpType] | None = None
    calibration_batches: int = Field(32, ge=1, le=100_000)
    nodes_to_exclude: list[str] = Field(default_factory=list)
    preprocess: bool = True
    compact: bool = True
    parity_min_top1: float | None = Field(0.9, ge=0, le=1)
    parity_min_cosine: float | None = Field(0.98, ge=-1, le=1)

    @model_validator(mode="after")
    def _check(self) -> OrtInt8Config:
        if self.op_types is not None and not self.op_types:
            raise ValueError("op_types must name at least one op type, or be null for onnxruntime's default")
        if self.mode == "dynamic" and self.activation_type != "uint8":
            raise ValueError("dynamic quantization always uses uint8 activations; leave activation_type as uint8")
        return self


__all__ = ["OrtInt8Config"]
