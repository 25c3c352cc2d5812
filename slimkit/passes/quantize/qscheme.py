"""Quantizer math, free of modules and state.

Uniform (affine) quantization: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and
``x_hat = (q - zero_point) * scale``. Ranges always include 0, so 0 is exactly representable.
Parameters broadcast along ``axis`` (per-channel) or per group (``group_size`` consecutive elements of
each row of a 2-D view ``w.reshape(C, -1)``). Logarithmic quantization keeps power-of-two levels with a
sign; binary quantization keeps ``sign(w) * mean|w|`` per output channel.

Conventions used across slimkit (the ONNX exporter relies on them):
- ``scale``: float32, shape ``()`` per tensor, ``(C,)`` per channel, ``(C, G)`` per group.
- ``zero_point``: float32 tensor holding integers, same shape as ``scale``; cast with
  ``zero_point.round().to(torch.uint8 or torch.int8)``.
- Signed symmetric ranges are narrow: ``[-(2^(b-1)-1), 2^(b-1)-1]`` (so ``-x`` and ``x`` are alike);
  signed asymmetric ``[-2^(b-1), 2^(b-1)-1]``; unsigned ``[0, 2^b-1]``.
"""

from __future__ import annotations

import math

import torch

_EPS = torch.finfo(torch.float32).eps


def qrange(bits: int, symmetric: bool, unsigned: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` for ``bits`` bits."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if unsigned:
        return 0, 2**bits - 1
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def compute_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, bits: int, symmetric: bool, unsigned: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32, same shape as ``min_val``) for the range ``[min_val, max_val]``.

    The range is widened to include 0, and the zero point is an integer, so 0 maps exactly to ``zero_point``.
    Symmetric: ``scale = max|x| / ((qmax - qmin) / 2)``, zero point at the middle of the range (0 when signed).
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    qmin, qmax = qrange(bits, symmetric, unsigned)
    lo = torch.minimum(min_val, torch.zeros_like(min_val))
    hi = torch.maximum(max_val, torch.zeros_like(max_val))
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (amax / ((qmax - qmin) / 2)).clamp_min(_EPS)
        zp = torch.full_like(scale, float((qmin + qmax + 1) // 2))
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zp


def broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel parameter so it broadcasts against ``x`` along ``axis``."""
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes of ``x`` (uint8 when ``qmin >= 0`` and ``qmax < 256``, int8 when it fits, else int32)."""
    s, z = broadcast_param(scale, x, axis), broadcast_param(zero_point, x, axis)
    q = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
    if qmin >= 0 and qmax <= 255:
        return q.to(torch.uint8)
    if qmin >= -128 and qmax <= 127:
        return q.to(torch.int8)
    return q.to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """Float values of integer codes ``q``."""
    s, z = broadcast_param(scale, q, axis), broadcast_param(zero_point, q, axis)
    return (q.to(torch.float32) - z) * s


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  axis: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, without gradients (see fake_quant.py for STE/LSQ versions)."""
    s, z = broadcast_param(scale, x, axis), broadcast_param(zero_point, x, axis)
    return (torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax) - z) * s


# ----------------------------------------------------------------------------------------------- groups
def to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View a weight ``(C, ...)`` as ``(C, G, group_size)``; the inner size must divide by ``group_size``."""
    flat = w.reshape(w.shape[0], -1)
    if flat.shape[1] % group_size:
        raise ValueError(f"{flat.shape[1]} inputs per output channel do not divide into groups of {group_size}")
    return flat.reshape(w.shape[0], -1, group_size)


def group_qparams(w: torch.Tensor, group_size: int, bits: int, symmetric: bool = True,
                  unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min/max qparams, shape ``(C, G)``."""
    g = to_groups(w.detach(), group_size)
    return compute_qparams(g.amin(-1), g.amax(-1), bits, symmetric, unsigned)


def fake_quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                         group_size: int) -> torch.Tensor:
    """Fake-quantize ``w`` with per-group ``scale``/``zero_point`` of shape ``(C, G)``."""
    g = to_groups(w, group_size)
    out = (torch.clamp(torch.round(g * (1.0 / scale[..., None])) + zero_point[..., None], qmin, qmax)
           - zero_point[..., None]) * scale[..., None]
    return out.reshape(w.shape)


def per_channel_qparams(w: torch.Tensor, bits: int, symmetric: bool = True, unsigned: bool = False,
                        axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max qparams per channel along ``axis``."""
    dims = [d for d in range(w.dim()) if d != axis]
    return compute_qparams(w.detach().amin(dim=dims), w.detach().amax(dim=dims), bits, symmetric, unsigned)


# ------------------------------------------------------------------------------------------------- log
def log_levels(bits: int) -> int:
    """Number of nonzero magnitudes of a ``bits``-bit log quantizer: one sign bit, one code kept for zero."""
    return 2 ** (bits - 1) - 1


def log_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int, axis: int | None = 0) -> torch.Tensor:
    """Log codes (uint8): ``sign << (bits-1) | e`` with ``e = 0`` for zero, else ``e = k + 1`` for the magnitude
    ``scale * 2^-k`` (``k`` in ``0..levels-1``). Rounding picks the nearest level in linear distance."""
    n = log_levels(bits)
    s = broadcast_param(scale, w, axis)
    r = (w.abs() / s).clamp_max(1.0)
    e = torch.floor(torch.log2(r.clamp_min(1e-30)))
    e = torch.where(r / torch.exp2(e) >= 1.5, e + 1, e)  # nearest of 2^e and 2^(e+1)
    k = (-e).clamp(0, n - 1)
    smallest = 2.0 ** -(n - 1)
    code = torch.where(r < smallest / 2, torch.zeros_like(k), k + 1)
    sign = (w < 0).to(torch.uint8) << (bits - 1)
    return sign | code.to(torch.uint8)


def log_dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int, axis: int | None = 0) -> torch.Tensor:
    """Float values of log codes."""
    mag_code = (codes & (2 ** (bits - 1) - 1)).to(torch.float32)
    sign = 1.0 - 2.0 * ((codes >> (bits - 1)) & 1).to(torch.float32)
    mag = torch.where(mag_code > 0, torch.exp2(-(mag_code - 1)), torch.zeros_like(mag_code))
    return sign * mag * broadcast_param(scale, codes, axis)


def log_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Largest magnitude, per output channel (axis 0) or per tensor."""
    w = w.detach()
    s = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().amax()
    return s.clamp_min(_EPS).float()


def log_fake_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int, axis: int | None = 0) -> torch.Tensor:
    """``log_dequantize(log_quantize(w))``."""
    return log_dequantize(log_quantize(w, scale, bits, axis), scale, bits, axis).to(w.dtype)


# ---------------------------------------------------------------------------------------------- binary
def binary_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """XNOR-Net scale: ``mean|w|`` per output channel (axis 0) or per tensor."""
    w = w.detach()
    return (w.abs().reshape(w.shape[0], -1).mean(1) if per_channel else w.abs().mean()).float()


def binarize(w: torch.Tensor, scale: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """``sign(w) * scale`` with ``sign(0) = +1``, so every value is exactly ``+scale`` or ``-scale``."""
    sign = torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))
    return sign * broadcast_param(scale, w, axis).to(w.dtype)


# ----------------------------------------------------------------------------------------------- metrics
def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - xq)^2)`` in dB (inf when exact)."""
    x = x.detach().double()
    noise = (x - xq.detach().double()).pow(2).sum().item()
    signal = x.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def theoretical_sqnr_db(bits: int) -> float:
    """The textbook SQNR of a full-scale uniform quantizer on a uniform signal: ``6.02 b + 1.76`` dB.
    Gaussian weights clipped at their max lose roughly 10-12 dB against it at 8 bits."""
    return 6.02 * bits + 1.76
