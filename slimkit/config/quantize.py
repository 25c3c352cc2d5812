"""Quantization configs.

Quantizer specs (not passes): :class:`Int` (uniform linear), :class:`LogQuant` (power-of-two levels),
:class:`Binary` (sign times a per-channel scale). Pass configs (recipe stage key ``quantize``):
:class:`PTQConfig` (``ptq``), :class:`DynamicConfig` (``dynamic``), :class:`WeightOnlyConfig`
(``weight-only``), :class:`QATConfig` (``qat``), :class:`LogQuantConfig` (``log``),
:class:`BinaryConfig` (``binary``), :class:`PrecisionConfig` (``fp16`` / ``bf16``: one class, the
``method`` is the dtype).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from slimkit.config.base import PassConfig, StrictModel
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field

ObserverName = Literal["minmax", "ema", "percentile", "entropy", "mse"]


class Int(StrictModel):
    """Uniform linear quantizer: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    bits: 2..8. symmetric: zero_point = 0 (signed range ``[-2^(b-1)+1, 2^(b-1)-1]``, restricted so that
    ``-x`` and ``x`` quantize alike). unsigned: use ``[0, 2^b-1]`` (asymmetric activations, e.g. after ReLU).
    per_channel: one scale per output channel (axis 0 of a weight). group_size: one scale per ``group_size``
    consecutive input elements of each output channel (sets per_channel=True when not given; weights only).
    observer: how the range is found from data (minmax, ema, percentile, entropy, mse).
    percentile: the percentile kept by the ``percentile`` observer (e.g. 99.99).
    """

    kind: Literal["int"] = "int"
    bits: int = Field(8, ge=2, le=8)
    symmetric: bool = True
    per_channel: bool = False
    group_size: int | None = Field(None, ge=4, le=4096)
    observer: ObserverName = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    unsigned: bool = False

    def __init__(self, bits: int | None = None, /, **data: Any) -> None:
        if bits is not None:
            data["bits"] = bits
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _groups_imply_channels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("group_size") is not None and "per_channel" not in data:
            data = {**data, "per_channel": True}
        return data

    @model_validator(mode="after")
    def _check(self) -> Int:
        if self.group_size is not None and not self.per_channel:
            raise ValueError("group_size needs per_channel=True (groups split each output channel)")
        if self.unsigned and self.symmetric:
            raise ValueError("unsigned=True needs symmetric=False (an unsigned range has a zero point)")
        return self


class LogQuant(StrictModel):
    """Logarithmic (power-of-two) quantizer: ``x ~ sign(x) * scale * 2^-k`` with one sign bit, ``bits-1`` bits
    for the exponent ``k`` and one exponent code reserved for zero. ``scale`` is per output channel when
    ``per_channel`` (the largest magnitude)."""

    kind: Literal["log"] = "log"
    bits: int = Field(4, ge=2, le=8)
    per_channel: bool = True

    def __init__(self, bits: int | None = None, /, **data: Any) -> None:
        if bits is not None:
            data["bits"] = bits
        super().__init__(**data)


class Binary(StrictModel):
    """Binary quantizer (XNOR-Net style): ``w_b = sign(w) * mean(|w|)`` per output channel."""

    kind: Literal["binary"] = "binary"
    per_channel: bool = True


def _spec_kind(v: Any) -> str:
    """The quantizer kind of a weight spec; a mapping without ``kind`` is an :class:`Int`."""
    if isinstance(v, dict):
        return str(v.get("kind", "int"))
    return str(getattr(v, "kind", "int"))


WeightSpec = Annotated[
    Annotated[Int, Tag("int")] | Annotated[LogQuant, Tag("log")] | Annotated[Binary, Tag("binary")],
    Discriminator(_spec_kind),
]
"""A weight quantizer: ``Int`` (default when ``kind`` is omitted), ``LogQuant`` or ``Binary``."""


class MixedPrecision(StrictModel):
    """Sensitivity-guided mixed precision for a PTQ stage (``quantize: {method: ptq, mixed: {...}}``).

    Each candidate layer is quantized alone (the rest left in float) and scored against the stage's input
    model; the layers are ranked by the fidelity they lose, and the most sensitive are kept at higher
    precision, one at a time, until the measured fidelity of the whole mixed model reaches ``floor``.

    metric: ``top1_agreement`` (fraction of inputs whose argmax matches the input model's), ``cosine`` (mean
    per-sample cosine of the outputs) or ``accuracy`` (accuracy relative to the input model's, so 1.0 means
    no loss; needs labels). floor: the fidelity the mixed model must reach, in (0, 1]. max_keep: at most this
    many layers are kept (``None``: no limit). keep_as: ``float`` (skip the layer: float weights and inputs),
    ``int8`` (8-bit weights, same activations) or ``auto`` (int8 when the stage's weights are below 8 bits,
    else float). layers: candidate layer-name globs or class names (empty: every quantized layer); the
    others are always quantized. data / batches: score on this many batches of the validation split (the
    calibration batches when there is none, or with ``data: calibration``).
    """

    metric: Literal["top1_agreement", "cosine", "accuracy"] = "top1_agreement"
    floor: float = Field(0.99, gt=0, le=1)
    max_keep: int | None = Field(None, ge=0, le=100_000)
    keep_as: Literal["auto", "float", "int8"] = "auto"
    layers: list[str] = Field(default_factory=list)
    data: Literal["val", "calibration"] = "val"
    batches: int = Field(8, ge=1, le=100_000)


class PTQConfig(PassConfig):
    """Static post-training quantization: observers on weights and layer inputs, calibration, then frozen
    fake-quant modules (:class:`slimkit.passes.quantize.modules.QuantLinear` / ``QuantConv2d``).

    weights: the weight quantizer (default int8 symmetric per-channel).
    activations: the input-activation quantizer, or ``None`` for weight-only fake quant.
    calibration_batches: at most this many calibration batches are used.
    skip: module-name globs (``fc*``, ``features.0``) or class names (``Linear``) kept in float.
    overrides: module-name glob or class name -> weight spec for those layers (first match wins).
    fold_bn: fold BatchNorm into the preceding convolution first (recommended for deployment).
    include: layer types that are quantized.
    mixed: sensitivity-guided mixed precision (:class:`MixedPrecision`), or ``None`` for one precision.
    """

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.ptq"
    method: Literal["ptq"] = "ptq"
    weights: WeightSpec = Field(default_factory=lambda: Int(8, per_channel=True))
    activations: Int | None = Field(default_factory=lambda: Int(8, symmetric=False, unsigned=True))
    calibration_batches: int = Field(32, ge=1, le=100_000)
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()
    overrides: dict[str, WeightSpec] = Field(default_factory=dict)
    fold_bn: bool = True
    include: list[Literal["Linear", "Conv1d", "Conv2d"]] = Field(default_factory=lambda: ["Linear", "Conv2d"])
    mixed: MixedPrecision | None = None

    @classmethod
    def shorthand(cls, *, bits: int | None = None, group_size: int | None = None, **flags: Any) -> dict[str, Any]:
        """``bits``/``group_size`` set the per-channel weight quantizer (8 bits when not given)."""
        body = super().shorthand(**flags)
        body["weights"] = {"bits": 8 if bits is None else bits, "per_channel": True,
                           **({"group_size": group_size} if group_size is not None else {})}
        return body

    @model_validator(mode="after")
    def _check(self) -> PTQConfig:
        if (self.mixed is not None and self.mixed.keep_as == "int8" and isinstance(self.weights, Int)
                and self.weights.bits == 8):
            raise ValueError("mixed.keep_as 'int8' needs weights below 8 bits (they are 8-bit already); "
                             "use keep_as 'float' or 'auto'")
        if self.activations is not None and self.activations.group_size is not None:
            raise ValueError("activations cannot use group_size (groups are for weights)")
        if self.activations is not None and self.activations.per_channel:
            raise ValueError("activations must be per-tensor (per_channel=False)")
        return self


class DynamicConfig(PassConfig):
    """Dynamic int8: int8 weights, activations quantized per batch at run time (Linear layers only).
    Uses torchao's ``Int8DynamicActivationInt8WeightConfig`` on CPU."""

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.dynamic"
    method: Literal["dynamic"] = "dynamic"
    bits: Literal[8] = 8
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()


class WeightOnlyConfig(PassConfig):
    """Weight-only quantization of Linear (and Conv2d for ``bits < 8``) layers: int8 per-channel, or int4 with
    one scale per ``group_size`` inputs. Weights are stored packed; the forward dequantizes."""

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.weight_only"
    method: Literal["weight-only"] = "weight-only"
    bits: Literal[2, 4, 8] = 8
    group_size: Literal[32, 64, 128] | None = None
    backend: Literal["auto", "torchao", "slimkit"] = "auto"
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()


class QATConfig(PassConfig):
    """Quantization-aware training: LSQ fake-quant on weights (and optionally inputs), then fine-tuning.

    bits / per_channel: the weight quantizer. activations: input activation bits, or ``None``.
    learnable_scale: LSQ (scales are trained) instead of observer-driven scales.
    freeze_observers_epoch: from this epoch on, observers stop updating (scales keep learning with LSQ).
    fold_bn_epoch: at the start of this epoch, BatchNorm is folded into the preceding conv (``None``: fold
    at the start, 0 the same). finetune: the training settings.
    """

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.qat"
    method: Literal["qat"] = "qat"
    bits: int = Field(8, ge=2, le=8)
    per_channel: bool = True
    learnable_scale: bool = True
    activations: int | None = Field(8, ge=2, le=8)
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(epochs=3, lr=1e-4))
    freeze_observers_epoch: int | None = Field(None, ge=0)
    fold_bn_epoch: int | None = Field(None, ge=0)
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()

    @classmethod
    def shorthand(cls, **flags: Any) -> dict[str, Any]:
        """As the base, plus a short fine-tuning (3 epochs at lr 1e-3) so a one-line QAT run learns something."""
        return {**super().shorthand(**flags), "finetune": {"epochs": 3, "lr": 0.001}}


class LogQuantConfig(PassConfig):
    """Logarithmic (power-of-two) weight quantization. Weights become ``sign * scale * 2^-k``; stored as packed
    sign+exponent codes."""

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.ptq"
    method: Literal["log"] = "log"
    bits: int = Field(4, ge=2, le=8)
    per_channel: bool = True
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()


class BinaryConfig(PassConfig):
    """Binary weights ``sign(w) * mean|w|`` per output channel (XNOR-Net). ``activations=True`` binarizes
    layer inputs too (sign with a straight-through estimator). The first and last layers are usually kept
    float (``skip``)."""

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.ptq"
    flag_notes: ClassVar[dict[str, str]] = {"bits": "binary weights are 1 bit"}
    method: Literal["binary"] = "binary"
    activations: bool = False
    skip: list[str] = skip_field("kept in float")
    filter_fn: LayerFilterFn | None = filter_fn_field()


class PrecisionConfig(PassConfig):
    """Half precision: ``method`` is ``fp16`` or ``bf16``. Inputs are cast at the model entry and outputs cast
    back to float32; normalization layers stay float32 when ``keep_norms_fp32``."""

    kind: ClassVar[str] = "quantize"
    handler_module: ClassVar[str] = "slimkit.passes.quantize.precision"
    flag_notes: ClassVar[dict[str, str]] = {"bits": "half precision has no bit width"}
    method: Literal["fp16", "bf16"] = "fp16"
    keep_norms_fp32: bool = True


class BF16Config(PrecisionConfig):
    """:class:`PrecisionConfig` with ``method="bf16"`` (registered under its own method name)."""

    method: Literal["bf16"] = "bf16"  # type: ignore[assignment]


class FP16Config(PrecisionConfig):
    """:class:`PrecisionConfig` with ``method="fp16"``."""

    method: Literal["fp16"] = "fp16"  # type: ignore[assignment]


__all__ = [
    "BF16Config", "Binary", "BinaryConfig", "DynamicConfig", "FP16Config", "Int", "LogQuant", "LogQuantConfig",
    "MixedPrecision", "PTQConfig", "PrecisionConfig", "QATConfig", "WeightOnlyConfig"
]
