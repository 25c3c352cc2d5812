"""Packed storage of low-bit codes, so a saved quantized model is really smaller.

Codes of ``b`` bits (unsigned, ``0 .. 2^b - 1``) take ``b * n / 8`` bytes: for 1, 2 and 4 bits ``8 / b`` codes share a
byte (lowest bits first); 3, 5, 6 and 7 bits are stored as ``b`` bit planes of ``ceil(n / 8)`` bytes. Linear codes are ``q - qmin``; log codes are
``sign << (b-1) | exponent`` (see qscheme.log_quantize); binary codes are 1 bit (1 = negative).

:func:`packed_state_dict` turns a fake-quant model's state dict into one whose quantized weights are packed:
the key ``<layer>.module.weight`` is replaced by ``<layer>.module.weight.packed`` (uint8), and a JSON-able
``meta`` entry ``{"scheme": "int"|"log"|"binary", "bits", "shape", "qmin", "axis", "group_size"}`` says how to
unpack it; the scales stay under ``<layer>.weight_fake_quant.scale`` / ``.zero_point``. :func:`unpack_state_dict`
restores the (dequantized, i.e. exactly the fake-quantized) float weight under the original key, ready for
``load_state_dict`` on the rebuilt fake-quant model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimkit.passes.quantize import qscheme as qs
from slimkit.passes.quantize.fake_quant import BinaryFakeQuantize, FakeQuantize, LogFakeQuantize
from slimkit.passes.quantize.modules import quant_wrappers

PACKED_SUFFIX = ".packed"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_UNPACK_TABLE = ((torch.arange(256, dtype=torch.uint8)[:, None] & _BITS) > 0).to(torch.uint8)  # byte -> 8 bits


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (values ``< 2^bits``) into a flat uint8 tensor of ``ceil(n * bits / 8)`` bytes
    (1, 2, 4 bits: ``8 / bits`` codes per byte, lowest bits first) or ``bits * ceil(n / 8)`` bytes (3, 5, 6, 7
    bits: bit planes)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = codes.detach().reshape(-1).to(torch.uint8).cpu()
    if bits == 8:
        return flat.clone()
    n = flat.numel()
    if 8 % bits == 0:
        per = 8 // bits
        flat = torch.cat([flat, torch.zeros((-n) % per, dtype=torch.uint8)]).reshape(-1, per)
        out = flat[:, 0].clone()
        for i in range(1, per):
            out |= flat[:, i] << (i * bits)
        return out
    flat = torch.cat([flat, torch.zeros((-n) % 8, dtype=torch.uint8)])
    planes = torch.stack([((flat >> b) & 1).reshape(-1, 8) for b in range(bits)])  # (bits, n/8, 8)
    return (planes * _BITS).sum(-1, dtype=torch.int32).to(torch.uint8).reshape(-1)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes as uint8 (one table lookup per byte)."""
    if bits == 8:
        return packed.reshape(-1)[:numel].to(torch.uint8)
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        return ((packed.reshape(-1, 1) >> shifts) & (2**bits - 1)).reshape(-1)[:numel]
    per_plane = math.ceil(numel / 8)
    table = _UNPACK_TABLE.to(packed.device)
    planes = table[packed.reshape(bits, per_plane).long()].reshape(bits, -1)[:, :numel]  # (bits, numel) of 0/1
    out = planes[0].clone()
    for b in range(1, bits):
        out |= planes[b] << b
    return out


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` uses for ``numel`` codes."""
    if 8 % bits == 0:
        return math.ceil(numel * bits / 8)
    return bits * math.ceil(numel / 8)


def _codes(fq: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unsigned codes and unpacking metadata for one weight."""
    if isinstance(fq, BinaryFakeQuantize):
        return (w < 0).to(torch.uint8), {"scheme": "binary", "bits": 1, "axis": fq.axis}
    if isinstance(fq, LogFakeQuantize):
        return fq.codes(w), {"scheme": "log", "bits": fq.bits, "axis": fq.axis}
    assert isinstance(fq, FakeQuantize)
    s, z = fq.scale.detach(), fq.zero_point.detach()
    if fq.group_size is not None:
        g = qs.to_groups(w.detach(), fq.group_size)
        q = torch.clamp(torch.round(g * (1.0 / s[..., None])) + z[..., None], fq.qmin, fq.qmax)
    else:
        b = qs.broadcast_param
        q = torch.clamp(torch.round(w.detach() * (1.0 / b(s, w, fq.axis))) + b(z, w, fq.axis), fq.qmin, fq.qmax)
    codes = (q - fq.qmin).to(torch.uint8)
    return codes, {"scheme": "int", "bits": fq.bits, "axis": fq.axis, "qmin": fq.qmin,
                   "group_size": fq.group_size}


def is_packable(fq: nn.Module | None) -> bool:
    """Whether a weight quantizer is frozen (observer off) and initialized, so its codes are final."""
    if fq is None or bool(getattr(fq, "observer_enabled", torch.tensor(1))):
        return False
    if isinstance(fq, FakeQuantize):
        return bool(fq.initialized) and bool(fq.fake_quant_enabled) and fq.bits <= 8
    return isinstance(fq, LogFakeQuantize | BinaryFakeQuantize)


def encode_weight(fq: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Packed codes (uint8) of ``w`` under a frozen weight quantizer, and the JSON-able metadata
    ``{"scheme", "bits", "axis", "shape", "dtype", ("qmin", "group_size")}`` to unpack them."""
    codes, info = _codes(fq, w)
    info.update(shape=list(w.shape), dtype=str(w.dtype).removeprefix("torch."))
    return pack_bits(codes, info["bits"]), info


def decode_weight(packed: torch.Tensor, info: dict[str, Any], scale: torch.Tensor,
                  zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """The float weight of :func:`encode_weight` output: exactly the fake-quantized weight."""
    shape = tuple(info["shape"])
    numel = math.prod(shape)
    codes = unpack_bits(packed, info["bits"], numel).reshape(shape)
    scale = scale.detach().float().cpu()
    axis = info.get("axis")
    if info["scheme"] == "binary":
        w = qs.binarize(torch.where(codes.bool(), -1.0, 1.0), scale, axis)
    elif info["scheme"] == "log":
        w = qs.log_dequantize(codes, scale, info["bits"], axis)
    else:
        zp = (torch.zeros_like(scale) if zero_point is None else zero_point.detach().float().cpu())
        q = codes.float() + info["qmin"]
        if info.get("group_size"):
            g = q.reshape(shape[0], -1, info["group_size"])
            w = ((g - zp[..., None]) * scale[..., None]).reshape(shape)
        else:
            w = qs.dequantize(q, scale, zp, axis)
    return w.to(getattr(torch, info.get("dtype", "float32")))


def packed_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The model's state dict with every frozen quantized weight packed, and the metadata to unpack it.

    Only quantizers that are frozen (observer off) and initialized are packed; others stay float. The float
    weights of packed layers are *not* kept, so the saved bytes are the packed bytes plus scales."""
    sd = dict(model.state_dict())
    meta: dict[str, dict[str, Any]] = {}
    for name, wrapper in quant_wrappers(model):
        fq = wrapper.weight_fake_quant
        if not is_packable(fq):
            continue
        key = f"{name}.module.weight"
        packed, info = encode_weight(fq, wrapper.module.weight)
        info["scales"] = f"{name}.weight_fake_quant"
        sd.pop(key, None)
        sd[key + PACKED_SUFFIX] = packed
        meta[key] = info
    return sd, meta


def unpack_state_dict(sd: dict[str, torch.Tensor], meta: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Restore float weights from :func:`packed_state_dict` output (values equal the fake-quantized weights)."""
    out = dict(sd)
    for key, info in meta.items():
        packed = out.pop(key + PACKED_SUFFIX)
        out[key] = decode_weight(packed, info, out[f"{info['scales']}.scale"],
                                 out.get(f"{info['scales']}.zero_point"))
    return out


def state_nbytes(sd: dict[str, torch.Tensor]) -> int:
    """Total tensor bytes of a state dict. A wrapper tensor subclass (torchao's ``Int8Tensor``, whose ``dtype``
    says float32) counts the bytes of the tensors it holds (``__tensor_flatten__``), not its nominal dtype."""
    return sum(tensor_nbytes(t) for t in sd.values())


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores: its inner tensors' for a wrapper subclass, else ``numel * element_size``."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(tensor_nbytes(getattr(t, n)) for n in names if isinstance(getattr(t, n, None), torch.Tensor))
    return t.numel() * t.element_size()
