"""Quantization-aware training: insert (LSQ) fake quantizers, fine-tune, freeze observers and fold BatchNorm
at the configured epochs.

The result is a fake-quant model of :class:`~slimkit.passes.quantize.modules.QuantWrapper` layers whose
``weight_fake_quant.scale`` / ``zero_point`` (per output channel) and ``input_fake_quant.scale`` /
``zero_point`` (per tensor) are the learned quantization parameters; the ONNX exporter writes them as
QuantizeLinear/DequantizeLinear pairs. Training uses :func:`slimkit.passes.finetune.loop.train_model`; when
freezing or folding happens mid-way, training runs in segments (each segment restarts the learning-rate
schedule and the optimizer state).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.config.quantize import QATConfig
from slimkit.context import PassContext, PassRecord, eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError
from slimkit.passes.quantize.fake_quant import FakeQuantize
from slimkit.passes.quantize.forms import FAKEQUANT
from slimkit.passes.quantize.modules import fake_quantizers, freeze_all, quantizable_layers, wrap_layers
from slimkit.passes.quantize.ptq import fold_bn
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def prepare_qat(model: nn.Module, cfg: QATConfig) -> nn.Module:
    """Wrap every Linear/Conv layer outside ``cfg.skip`` with QAT fake quantizers (in place).

    Weights: symmetric, per-channel when ``cfg.per_channel``; LSQ learnable scales initialized from an MSE
    search, or observer-driven (min-max) scales. Inputs (``cfg.activations`` bits): asymmetric unsigned,
    per tensor; LSQ scale and zero point initialized from min-max, or a moving-average observer."""
    layers = list(quantizable_layers(model, ["Linear", "Conv1d", "Conv2d"], cfg.skip, cfg.filter_fn))
    if not layers:
        raise ConfigError("QAT found no Linear/Conv layer to quantize outside skip.")
    lsq = cfg.learnable_scale

    def make(name: str, layer: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        wfq = FakeQuantize(cfg.bits, symmetric=True, axis=0 if cfg.per_channel else None,
                           observer="mse" if lsq else "minmax", learnable=lsq)
        ifq = None
        if cfg.activations is not None:
            ifq = FakeQuantize(cfg.activations, symmetric=False, unsigned=True, axis=None,
                               observer="minmax" if lsq else "ema", learnable=lsq)
        return wfq, ifq

    wrap_layers(model, layers, make)
    return model


@torch.no_grad()
def init_quantizers(model: nn.Module, x: Any) -> None:
    """One forward pass (eval mode) so every quantizer gets its first scale (LSQ initialization)."""
    with eval_mode(model):
        call_model(model, x, model_device(model))


def freeze_observers(model: nn.Module) -> None:
    """Stop observers from updating scales (LSQ scales keep learning by gradient)."""
    for fq in fake_quantizers(model):
        if isinstance(fq, FakeQuantize):
            fq.enable_observer(False)


def _rebuild_qat(model: nn.Module, cfg: QATConfig, manifest: dict[str, Any]) -> nn.Module:
    """QAT's final structure without data or training: BatchNorm folded (QAT always folds by its end), the
    same LSQ/observer fake quantizers, frozen; the checkpoint then loads the learned scales."""
    fold_bn(model)
    prepare_qat(model, cfg)
    freeze_all(model)
    return model


@dataclass
class QATRecord(PassRecord):
    """What a QAT stage did: its weight/activation bits and the training history of each segment (observers
    frozen and BatchNorm folded between segments)."""

    key: ClassVar[str] = "qat"
    bits: int
    activations: int | None
    segments: list[Any] = field(default_factory=list)


@register_pass(QATConfig, needs=("train_loader",), rebuild=_rebuild_qat, export=FAKEQUANT)
def qat(model: nn.Module, cfg: QATConfig, ctx: PassContext) -> nn.Module:
    """Quantization-aware training (see module docstring). Its record (:class:`QATRecord`,
    ``ctx.extras["qat"]``) holds the training history, one entry per segment."""
    from slimkit.passes.finetune.loop import train_model

    first = next(iter(ctx.train_loader), None)
    if first is None:
        raise ConfigError("QAT needs training batches, but the train loader is empty.")
    epochs = cfg.finetune.epochs
    fold_at = 0 if cfg.fold_bn_epoch is None else cfg.fold_bn_epoch
    if fold_at == 0:
        fold_bn(model)
    prepare_qat(model, cfg)
    init_quantizers(model, split_batch(first)[0])
    if cfg.freeze_observers_epoch == 0:
        freeze_observers(model)

    cuts = sorted({e for e in (cfg.freeze_observers_epoch, fold_at) if e is not None and 0 < e < epochs})
    bounds = [0, *cuts, epochs]
    results = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == cfg.freeze_observers_epoch and a > 0:
            freeze_observers(model)
            log.info("QAT: observers frozen at epoch %d", a)
        if a == fold_at and a > 0:
            fold_bn(model)
            log.info("QAT: BatchNorm folded at epoch %d", a)
        if b > a:
            seg = cfg.finetune.model_copy(update={"epochs": b - a})
            results.append(train_model(model, ctx.train_loader, seg, val_loader=ctx.val_loader,
                                       seed=ctx.seed + a, description=f"QAT epochs {a + 1}-{b}"))
    if fold_at >= epochs > 0 or (fold_at > 0 and epochs == 0):
        fold_bn(model)
    freeze_all(model)
    ctx.add(QATRecord(bits=cfg.bits, activations=cfg.activations, segments=results))
    return model
