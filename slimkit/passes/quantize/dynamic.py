"""Dynamic int8 for Linear layers: int8 weights (per channel), activations quantized per batch at run time.

Backend: torchao ``Int8DynamicActivationInt8WeightConfig`` via ``torchao.quantization.quantize_`` (measured to run
on this CPU with torch 2.13 / torchao 0.18; weights become ``torchao.quantization.Int8Tensor`` subclasses).
If torchao cannot be imported, ``torch.ao.quantization.quantize_dynamic`` (deprecated in torch 2.13 but working,
fbgemm/x86 engine) is used instead. Its :class:`~slimkit.passes.quantize.records.QuantizeRecord` says which one ran.
Convolutions are left in float: dynamic int8 convolutions are slow on CPU (see docs/quantization.md).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from slimkit.config.quantize import DynamicConfig
from slimkit.context import PassContext, model_device
from slimkit.errors import ConfigError
from slimkit.passes.quantize.forms import TORCHAO
from slimkit.passes.quantize.modules import quantizable_layers
from slimkit.passes.quantize.records import record_backend
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def _rebuild(model: nn.Module, cfg: DynamicConfig, manifest: dict[str, Any]) -> nn.Module:
    """Quantize the fresh model the same way (data-free); the checkpoint then loads the int8 weights."""
    return dynamic(model, cfg, PassContext())


@register_pass(DynamicConfig, rebuild=_rebuild, export=TORCHAO)
def dynamic(model: nn.Module, cfg: DynamicConfig, ctx: PassContext) -> nn.Module:
    """Dynamic int8 quantization of Linear layers (see module docstring)."""
    layers = list(quantizable_layers(model, ["Linear"], cfg.skip, cfg.filter_fn))
    if not layers:
        raise ConfigError("dynamic quantization found no Linear layer outside skip.",
                          hint="Dynamic int8 is for Linear/MatMul-heavy models; use method 'ptq' for CNNs.")
    names = {n for n, _ in layers}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as exc:  # noqa: BLE001 - torchao missing or broken: fall back to torch.ao
        log.info("torchao unavailable (%s); using torch.ao.quantization.quantize_dynamic", exc)
    else:
        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
        record_backend(ctx, cfg.method, "torchao.Int8DynamicActivationInt8WeightConfig")
        return model
    if model_device(model).type != "cpu":
        raise ConfigError("torch.ao dynamic quantization runs on CPU only and torchao is not installed.",
                          hint="Move the model to CPU or install torchao.")
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    names = {n for n, _ in layers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            model.set_submodule(name, quantize_dynamic(nn.Sequential(model.get_submodule(name)), {nn.Linear},
                                                       dtype=torch.qint8)[0])
    record_backend(ctx, cfg.method, "torch.ao.quantize_dynamic")
    return model
