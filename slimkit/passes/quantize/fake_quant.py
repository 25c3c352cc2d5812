"""Fake-quantization modules: float in, float out, values snapped to the quantizer's grid.

Gradients: :class:`STEFakeQuant` is the clipped straight-through estimator (gradient 1 where ``x`` falls inside
the representable range, 0 outside). With ``learnable=True`` :class:`FakeQuantize` is LSQ (Esser et al., 2020)
and LSQ+ for the zero point: the scale (and zero point when asymmetric) are ``nn.Parameter``s and their
gradients are scaled by ``1 / sqrt(numel_per_scale * qmax)``.

Attribute names read by exporters (ONNX QDQ) and by packing.py — stable:
- ``FakeQuantize.scale``: float32, ``()`` per tensor, ``(C,)`` per channel (``axis``), ``(C, G)`` per group.
- ``FakeQuantize.zero_point``: float32 holding integers, same shape; ``qmin``/``qmax``/``bits``/``axis``/
  ``group_size``/``symmetric``/``unsigned`` are plain attributes. ONNX: ``QuantizeLinear(x, scale,
  zero_point.round().to(uint8 if unsigned else int8), axis)`` for 8 bits.
- ``LogFakeQuantize.scale`` (per channel largest magnitude) and ``BinaryFakeQuantize.scale`` (mean |w|).
- Switches: ``enable_observer(bool)``, ``enable_fake_quant(bool)``; buffers ``observer_enabled`` and
  ``fake_quant_enabled`` (uint8, saved with the state dict).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimkit.passes.quantize import qscheme as qs
from slimkit.passes.quantize.observers import Observer, make_observer


class STEFakeQuant(torch.autograd.Function):
    """Fake quantization with the clipped straight-through estimator; ``scale``/``zero_point`` get no
    gradient. Broadcasting: ``scale`` and ``zero_point`` are already shaped to broadcast against ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,  # noqa: D102
                qmin: int, qmax: int) -> torch.Tensor:
        q = torch.round(x * (1.0 / scale)) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None


def ste_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                      axis: int | None = None) -> torch.Tensor:
    """Fake quantization with the clipped STE; ``axis`` broadcasts per-channel parameters."""
    return STEFakeQuant.apply(x, qs.broadcast_param(scale, x, axis), qs.broadcast_param(zero_point, x, axis), qmin, qmax)


def _grad_scale(p: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward, gradient times ``g``."""
    return (p - p * g).detach() + p * g


def _round_pass(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity gradient."""
    return (x.round() - x).detach() + x


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                      grad_factor: float, axis: int | None = None) -> torch.Tensor:
    """LSQ/LSQ+: differentiable in ``x`` (clipped STE), ``scale`` and ``zero_point``. ``grad_factor`` is
    ``1 / sqrt(numel_per_scale * qmax)``."""
    s = qs.broadcast_param(_grad_scale(scale, grad_factor), x, axis)
    z = qs.broadcast_param(_round_pass(_grad_scale(zero_point, grad_factor)), x, axis)
    q = torch.clamp(_round_pass(x / s) + z, qmin, qmax)
    return (q - z) * s


class _ResizingLoad(nn.Module):
    """Loads ``scale``/``zero_point`` of any saved shape (a fresh quantizer starts with shape ``()``)."""

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("scale", "zero_point"):
            saved = state_dict.get(prefix + name)
            cur = getattr(self, name, None)
            if saved is not None and isinstance(cur, torch.Tensor) and cur.shape != saved.shape:
                new = torch.zeros(saved.shape, dtype=cur.dtype, device=cur.device)
                if isinstance(cur, nn.Parameter):
                    setattr(self, name, nn.Parameter(new, requires_grad=cur.requires_grad))
                else:
                    setattr(self, name, new)
        super()._load_from_state_dict(state_dict, prefix, *args)


class FakeQuantize(_ResizingLoad):
    """Uniform fake quantizer with an observer, STE gradients, and optional LSQ learnable scale.

    axis: channel axis for per-channel (0 for weights), ``None`` per tensor. group_size: per-group along the
    flattened inputs of each output channel (weights; observer is min/max per group). learnable: LSQ.
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False, axis: int | None = None,
                 group_size: int | None = None, observer: str | Observer = "minmax", learnable: bool = False,
                 percentile: float = 99.99) -> None:
        super().__init__()
        self.bits, self.symmetric, self.unsigned = bits, symmetric, unsigned
        self.axis = 0 if group_size is not None else axis
        self.group_size = group_size
        self.learnable = learnable
        self.qmin, self.qmax = qs.qrange(bits, symmetric, unsigned)
        if isinstance(observer, Observer):
            self.observer = observer
        else:
            self.observer = make_observer(observer, bits=bits, symmetric=symmetric, unsigned=unsigned,
                                          axis=None if group_size is not None else axis, percentile=percentile)
        if learnable:
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.zero_point = nn.Parameter(torch.tensor(0.0), requires_grad=not symmetric)
        else:
            self.register_buffer("scale", torch.tensor(1.0))
            self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def enable_observer(self, on: bool = True) -> FakeQuantize:
        self.observer_enabled.fill_(int(on))
        return self

    def enable_fake_quant(self, on: bool = True) -> FakeQuantize:
        self.fake_quant_enabled.fill_(int(on))
        return self

    def freeze(self) -> FakeQuantize:
        """Compute the qparams from what the observer saw (unless LSQ already owns them), stop observing, and
        quantize from now on. A quantizer that never saw data stays a pass-through."""
        if self.group_size is None and self.observer.observed and not (self.learnable and bool(self.initialized)):
            self.set_qparams(*self.observer.calculate_qparams())
        return self.enable_observer(False).enable_fake_quant(True)

    def set_qparams(self, scale: torch.Tensor, zp: torch.Tensor) -> None:
        """Set ``scale``/``zero_point`` (in place for LSQ parameters of the same shape) and mark initialized."""
        scale, zp = scale.detach().float(), zp.detach().float()
        if self.learnable and self.scale.shape == scale.shape:  # in place: optimizers keep their reference
            self.scale.data.copy_(scale)
            self.zero_point.data.copy_(zp)
        elif self.learnable:
            dev = self.scale.device
            self.scale = nn.Parameter(scale.to(dev))
            self.zero_point = nn.Parameter(zp.to(dev), requires_grad=not self.symmetric)
        else:
            self.scale = scale.to(self.scale.device)
            self.zero_point = zp.to(self.zero_point.device)
        self.initialized.fill_(1)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record ``x``. The qparams follow the observer while fake quantization is on (LSQ: only until the
        first update); during calibration (fake quant off) they are computed once, by :meth:`freeze`."""
        if self.group_size is not None:
            if not (self.learnable and bool(self.initialized)):
                self.set_qparams(*qs.group_qparams(x, self.group_size, self.bits, self.symmetric, self.unsigned))
            return
        self.observer(x)
        if bool(self.fake_quant_enabled) and not (self.learnable and bool(self.initialized)):
            self.set_qparams(*self.observer.calculate_qparams())

    def reset_observer(self) -> FakeQuantize:
        """Forget what the observer saw; the next observed tensor sets fresh qparams (used after BN folding)."""
        self.observer = type(self.observer)(**self.observer.init_args()).to(self.scale.device)
        self.initialized.fill_(0)
        return self

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current ``(scale, zero_point)``, detached."""
        return self.scale.detach(), self.zero_point.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.observer_enabled):
            self.observe(x)
        if not bool(self.fake_quant_enabled) or not bool(self.initialized):
            return x
        if self.group_size is not None:
            if self.learnable and torch.is_grad_enabled():
                g = qs.to_groups(x, self.group_size)
                out = lsq_fake_quantize(g, self.scale[..., None], self.zero_point[..., None], self.qmin, self.qmax,
                                        self._grad_factor(self.group_size))
                return out.reshape(x.shape)
            return _GroupSTE.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, self.group_size)
        if self.learnable and torch.is_grad_enabled():
            per = x.numel() // max(self.scale.numel(), 1)
            return lsq_fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax,
                                     self._grad_factor(per), self.axis)
        return ste_fake_quantize(x, self.scale.detach(), self.zero_point.detach(), self.qmin, self.qmax, self.axis)

    def _grad_factor(self, numel_per_scale: int) -> float:
        return 1.0 / math.sqrt(max(numel_per_scale, 1) * max(self.qmax, 1))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, unsigned={self.unsigned}, axis={self.axis}, "
                f"group_size={self.group_size}, learnable={self.learnable}")


class _GroupSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,  # noqa: D102
                group_size: int) -> torch.Tensor:
        g = qs.to_groups(w, group_size)
        q = torch.round(g * (1.0 / scale[..., None])) + zp[..., None]
        ctx.save_for_backward(((q >= qmin) & (q <= qmax)).reshape(w.shape))
        return ((q.clamp(qmin, qmax) - zp[..., None]) * scale[..., None]).reshape(w.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None, None


class _PassThrough(torch.autograd.Function):
    """Forward returns ``y`` exactly; the gradient flows to ``x`` unchanged, or only where ``|x| <= clip``
    when ``clip`` is given (hard-tanh STE)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, clip: float | None = None) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x.abs() <= clip if clip is not None else torch.ones((), dtype=torch.bool))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None


class LogFakeQuantize(_ResizingLoad):
    """Power-of-two weight quantizer (see :func:`qscheme.log_quantize`); ``scale`` = largest magnitude per
    output channel, recomputed while ``observer_enabled``. STE gradient."""

    def __init__(self, bits: int = 4, per_channel: bool = True) -> None:
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.axis = 0 if per_channel else None
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))

    def freeze(self) -> LogFakeQuantize:
        self.observer_enabled.fill_(0)
        return self

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if bool(self.observer_enabled):
            self.scale = qs.log_scale(w, self.per_channel).to(w.device)
        y = qs.log_fake_quantize(w.detach(), self.scale, self.bits, self.axis)
        return _PassThrough.apply(w, y)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """uint8 sign+exponent codes of ``w`` (for packing)."""
        return qs.log_quantize(w.detach(), self.scale, self.bits, self.axis)


class BinaryFakeQuantize(_ResizingLoad):
    """XNOR-Net weight binarization ``sign(w) * mean|w|`` (per output channel); STE gradient clipped to
    ``|w| <= 1`` as in BinaryConnect when ``clip_grad``."""

    bits = 1

    def __init__(self, per_channel: bool = True, clip_grad: bool = False) -> None:
        super().__init__()
        self.per_channel, self.clip_grad = per_channel, clip_grad
        self.axis = 0 if per_channel else None
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))

    def freeze(self) -> BinaryFakeQuantize:
        self.observer_enabled.fill_(0)
        return self

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if bool(self.observer_enabled):
            self.scale = qs.binary_scale(w, self.per_channel).to(w.device)
        y = qs.binarize(w.detach(), self.scale, self.axis)
        return _PassThrough.apply(w, y, 1.0 if self.clip_grad else None)


class SignActivation(nn.Module):
    """Binary activations ``sign(x)`` (``+1`` at 0) with the hard-tanh STE (gradient 1 for ``|x| <= 1``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
        return _PassThrough.apply(x, y, 1.0)
