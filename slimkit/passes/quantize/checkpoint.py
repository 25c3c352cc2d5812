"""Checkpoints of quantized models: codecs for ``slimkit.exporters.save_model`` and ``rebuild`` hooks.

Codecs (registered with :func:`slimkit.codecs.register_codec` when this package is
imported), so a quantized model's ``model.safetensors`` holds its weights in their quantized form and its
size on disk is real:

- ``slimkit.quant-weight``: the float weight of a :class:`~slimkit.passes.quantize.modules.QuantWrapper`
  whose weight quantizer is frozen (after PTQ, QAT, log, binary) is stored as packed codes
  (``<layer>.module.weight::codes``: int codes ``q - qmin`` at 2..8 bits, log sign+exponent codes, 1-bit
  signs; see :mod:`~slimkit.passes.quantize.packing`); the scales and zero points stay in the state as
  ``<layer>.weight_fake_quant.scale`` / ``.zero_point``. It decodes to exactly the fake-quantized weight,
  so the reloaded model computes bit for bit what the saved one did. The float "shadow" weight (what QAT
  trains) is not kept: training resumed from a checkpoint starts from the quantized weight.
- ``slimkit.torchao-int8``: a torchao ``Int8Tensor`` weight (``dynamic`` and ``weight-only`` int8 through
  torchao) is stored as its int8 ``qdata`` and fp32 ``scale`` and decodes to the same ``Int8Tensor``.

- ``slimkit.uint8-zero-point``: the zero points of weight-only packed layers (int4/int2, integers in
  ``0..2^bits-1`` held as float32 for the forward) are stored as uint8; their ``qweight`` is already packed.

fp16/bf16 models hold half tensors and are saved as they are.

Rebuild hooks (``register_pass(..., rebuild=...)``) redo a pass's module structure on a freshly built model,
without data, so ``load_model`` can load a stage checkpoint (``--resume``, ``slimkit eval``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.codecs import register_codec
from slimkit.errors import ModelLoadError
from slimkit.passes.quantize.modules import QuantWrapper
from slimkit.passes.quantize.packing import decode_weight, encode_weight, is_packable

_MODULE = __name__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ------------------------------------------------------------------------------ fake-quant wrappers
def _encode_wrapper(module: nn.Module, prefix: str) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    assert isinstance(module, QuantWrapper)
    fq = module.weight_fake_quant
    w = getattr(module.module, "weight", None)
    if not is_packable(fq) or not isinstance(w, torch.Tensor) or type(w) not in (torch.Tensor, nn.Parameter):
        return {}
    packed, info = encode_weight(fq, w)
    info["scales"] = _join(prefix, "weight_fake_quant")
    return {_join(prefix, "module.weight"): ({"codes": packed}, info)}


def _decode_wrapper(parts: dict[str, torch.Tensor], info: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> torch.Tensor:
    scales = info["scales"]
    return decode_weight(parts["codes"], info, state[f"{scales}.scale"], state.get(f"{scales}.zero_point"))


register_codec("slimkit.quant-weight", (QuantWrapper,), _encode_wrapper, _decode_wrapper, module=_MODULE)


# ------------------------------------------------------------------------------ packed weight-only layers
def _encode_packed_zero_point(module: nn.Module, prefix: str) -> dict[str, tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]]:
    zp = getattr(module, "zero_point", None)
    if not isinstance(zp, torch.Tensor) or zp.numel() == 0:
        return {}
    if not (torch.equal(zp, zp.round()) and zp.min() >= 0 and zp.max() <= 255):
        return {}
    return {_join(prefix, "zero_point"): ({"u8": zp.to(torch.uint8)}, {"dtype": str(zp.dtype).removeprefix("torch.")})}


def _decode_packed_zero_point(parts: dict[str, torch.Tensor], info: dict[str, Any],
                              state: dict[str, torch.Tensor]) -> torch.Tensor:
    return parts["u8"].to(getattr(torch, info["dtype"]))


def _register_packed_layer() -> None:
    from slimkit.passes.quantize.weight_only import PackedWeightLayer

    register_codec("slimkit.uint8-zero-point", (PackedWeightLayer,), _encode_packed_zero_point,
                   _decode_packed_zero_point, module=_MODULE)


_register_packed_layer()


# ------------------------------------------------------------------------------ torchao int8 tensors
def _is_torchao_int8(t: Any) -> bool:
    return type(t).__name__ == "Int8Tensor" and type(t).__module__.startswith("torchao")


def _encode_torchao(module: nn.Module, prefix: str) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    w = getattr(module, "weight", None)
    if not _is_torchao_int8(w):
        return {}
    name = _join(prefix, "weight")
    for extra in ("act_quant_scale", "act_quant_zero_point", "act_pre_scale"):
        if getattr(w, extra, None) is not None:
            raise ModelLoadError(f"cannot save '{name}': its torchao Int8Tensor carries {extra}, which slimkit's "
                                 "checkpoint format does not store.", hint="Save a model quantized by slimkit's "
                                 "dynamic or weight-only pass, or save the float model.")
    parts = {"qdata": w.qdata, "scale": w.scale}
    if getattr(w, "zero_point", None) is not None:
        parts["zero_point"] = w.zero_point
    kw = w.act_quant_kwargs
    act = None
    if kw is not None:
        act = {"granularity": type(kw.granularity).__name__, "dim": getattr(kw.granularity, "dim", None),
               "mapping_type": kw.mapping_type.name, "reduce_range": bool(kw.reduce_range)}
    info = {"block_size": list(w.block_size), "dtype": str(w.dtype).removeprefix("torch."), "act_quant": act,
            "reduce_range": bool(getattr(w, "reduce_range", False))}
    return {name: (parts, info)}


def _decode_torchao(parts: dict[str, torch.Tensor], info: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> torch.Tensor:
    from torchao.quantization import Int8Tensor
    from torchao.quantization import granularity as gran
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    act = info.get("act_quant")
    kwargs = None
    if act is not None:
        cls = getattr(gran, act["granularity"])
        g = cls(dim=act["dim"]) if act.get("dim") is not None else cls()
        kwargs = QuantizeTensorToInt8Kwargs(granularity=g, mapping_type=MappingType[act["mapping_type"]],
                                            reduce_range=act["reduce_range"])
    return Int8Tensor(parts["qdata"], parts["scale"], list(info["block_size"]), getattr(torch, info["dtype"]),
                      zero_point=parts.get("zero_point"), act_quant_kwargs=kwargs,
                      reduce_range=info.get("reduce_range", False))


register_codec("slimkit.torchao-int8", (nn.Linear,), _encode_torchao, _decode_torchao, module=_MODULE)


__all__: list[str] = []
