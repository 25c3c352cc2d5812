"""Weight-only quantization: int8 per channel, int4 / int2 with groups. Activations stay float.

Backends (``WeightOnlyConfig.backend``):
- ``torchao`` (int8 only): ``torchao.quantization.Int8WeightOnlyConfig`` through ``torchao.quantization.quantize_``.
  Works on this CPU (torchao 0.18). torchao's ``Int4WeightOnlyConfig`` needs the ``mslk`` kernel package (and
  CUDA), which is not available here, so int4 always uses the slimkit backend.
- ``slimkit``: :class:`PackedWeightLayer` keeps the codes packed in a uint8 buffer (``bits/8`` bytes per weight,
  plus one fp32 scale and zero point per group) and dequantizes in the forward. It is smaller, not faster: there
  is no int4 matmul kernel on CPU here, so each call pays a dequantization.
- ``auto``: torchao for int8 when it imports, slimkit otherwise.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from slimkit.config.quantize import WeightOnlyConfig
from slimkit.context import PassContext
from slimkit.errors import ConfigError
from slimkit.passes.quantize import qscheme as qs
from slimkit.passes.quantize.forms import TORCHAO
from slimkit.passes.quantize.modules import quantizable_layers
from slimkit.passes.quantize.packing import pack_bits, unpack_bits
from slimkit.passes.quantize.records import record_backend
from slimkit.registry import ExportForm, register_pass

log = logging.getLogger(__name__)


class PackedWeightLayer(nn.Module):
    """A Linear/Conv layer whose weight is stored as packed unsigned ``bits``-bit codes with per-group
    asymmetric ``scale``/``zero_point`` of shape ``(C, G)`` (``G = 1`` without groups). The float module
    (``module``) is kept without its weight; the forward dequantizes and calls it.

    Buffers: ``qweight`` (uint8, packed; see packing.pack_bits), ``scale``, ``zero_point`` (float32, integer
    values in ``0..2^bits-1``). Attributes: ``bits``, ``group_size``, ``weight_shape``.
    """

    def __init__(self, module: nn.Module, bits: int, group_size: int | None) -> None:
        super().__init__()
        w = module.weight.detach()
        self.bits, self.weight_shape = bits, tuple(w.shape)
        inner = w.reshape(w.shape[0], -1).shape[1]
        self.group_size = group_size or inner
        qmin, qmax = qs.qrange(bits, symmetric=False, unsigned=True)
        scale, zp = qs.group_qparams(w.float(), self.group_size, bits, symmetric=False, unsigned=True)
        g = qs.to_groups(w.float(), self.group_size)
        codes = torch.clamp(torch.round(g * (1.0 / scale[..., None])) + zp[..., None], qmin, qmax)
        self.register_buffer("qweight", pack_bits(codes.to(torch.uint8), bits).to(w.device))
        self.register_buffer("scale", scale.to(w.device))
        self.register_buffer("zero_point", zp.to(w.device))
        self._dtype = w.dtype
        del module._parameters["weight"]
        module.register_parameter("weight", None)
        self.module = module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer computes with."""
        numel = math.prod(self.weight_shape)
        codes = unpack_bits(self.qweight, self.bits, numel).float().reshape(self.weight_shape[0], -1,
                                                                            self.group_size)
        w = (codes - self.zero_point[..., None]) * self.scale[..., None]
        return w.reshape(self.weight_shape).to(self._dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {"weight": self.dequantized_weight()}, (x,), strict=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, group_size={self.group_size}, weight_shape={self.weight_shape}"


def _has_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedWeightLayer) for m in model.modules())


def _unpack(model: nn.Module) -> None:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, PackedWeightLayer):
            inner = mod.module
            inner.weight = nn.Parameter(mod.dequantized_weight().detach().float())
            model.set_submodule(name, inner)


PACKED = ExportForm(
    "packed", _has_packed, _unpack,
    runtime_note="The PyTorch latency above unpacks low-bit weights on every call; the saving is in bytes, not "
                 "time, unless a runtime with low-bit kernels is used.")
"""slimkit's packed weight-only layers (declared to the registry, read by the exporters)."""


def _torchao_int8(model: nn.Module, names: set[str]) -> bool:
    """torchao int8 weight-only on exactly the layers in ``names``; False when torchao is unavailable."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as exc:  # noqa: BLE001 - torchao missing or broken: fall back
        log.info("torchao unavailable (%s); using slimkit packed int8", exc)
        return False
    quantize_(model, Int8WeightOnlyConfig(),
              filter_fn=lambda m, fqn: fqn in names)
    return True


def _rebuild(model: nn.Module, cfg: WeightOnlyConfig, manifest: dict[str, Any]) -> nn.Module:
    """Redo the same layer replacement on the fresh model; the backend is read from the checkpoint (packed
    ``qweight`` buffers mean slimkit's), so a checkpoint loads where torchao's availability differs."""
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if isinstance(tensors, dict) and any(k.endswith(".qweight") for k in tensors):
        cfg = cfg.model_copy(update={"backend": "slimkit"})
    return weight_only(model, cfg, PassContext())


@register_pass(WeightOnlyConfig, rebuild=_rebuild, export=(PACKED, TORCHAO))
def weight_only(model: nn.Module, cfg: WeightOnlyConfig, ctx: PassContext) -> nn.Module:
    """Weight-only quantization (see module docstring). Its record says which backend ran."""
    include = ["Linear"] if cfg.bits == 8 else ["Linear", "Conv1d", "Conv2d"]
    layers = list(quantizable_layers(model, include, cfg.skip, cfg.filter_fn))
    if not layers:
        raise ConfigError(f"weight-only quantization found no {'/'.join(include)} layer outside skip.")
    for name, m in layers:
        inner = m.weight.reshape(m.weight.shape[0], -1).shape[1]
        if cfg.group_size and inner % cfg.group_size:
            raise ConfigError(f"layer '{name}' ({type(m).__name__}) has {inner} inputs per output channel, which "
                              f"do not divide into groups of {cfg.group_size}.",
                              hint="Pick another group_size, or add the layer to skip.")
    if cfg.bits == 8 and cfg.group_size is None and cfg.backend in ("auto", "torchao"):
        if _torchao_int8(model, {n for n, _ in layers}):
            record_backend(ctx, cfg.method, "torchao.Int8WeightOnlyConfig")
            return model
        if cfg.backend == "torchao":
            from slimkit.errors import DependencyError

            raise DependencyError("backend='torchao' was asked for but torchao cannot be imported.",
                                  hint="Install torchao or use backend='slimkit'.")
    elif cfg.backend == "torchao":
        raise ConfigError(f"torchao weight-only int{cfg.bits} (groups={cfg.group_size}) does not run on this CPU "
                          "(Int4WeightOnlyConfig needs the mslk kernels).", hint="Use backend='slimkit' or 'auto'.")
    done: dict[int, nn.Module] = {}
    for name, m in layers:
        if id(m) not in done:
            done[id(m)] = PackedWeightLayer(m, cfg.bits, cfg.group_size)
        model.set_submodule(name, done[id(m)])
    record_backend(ctx, cfg.method, "slimkit.PackedWeightLayer")
    return model
