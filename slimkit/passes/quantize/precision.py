"""fp16 / bf16 conversion.

The model's floating-point parameters and buffers are cast to the half dtype. A forward pre-hook on the
model casts floating-point inputs to that dtype and a forward hook casts floating-point outputs back to
float32, so callers keep feeding and reading float32. With ``keep_norms_fp32`` BatchNorm/LayerNorm/GroupNorm
stay float32 (their statistics lose precision in fp16) and get hooks that cast their input up and their
output back down. On CPUs without native fp16 arithmetic (this AMD Zen3), fp16 is mostly a storage
format: it halves the bytes but is usually slower than fp32; bf16 runs through oneDNN and may be close to
fp32 speed. Measure with slimkit.evaluation before choosing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.config.quantize import BF16Config, FP16Config, PrecisionConfig
from slimkit.context import PassContext
from slimkit.registry import ExportForm, register_pass

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def to_precision(model: nn.Module, dtype: torch.dtype, keep_norms_fp32: bool = True) -> nn.Module:
    """Cast ``model`` to ``dtype`` in place with input/output casting hooks (see module docstring)."""
    model.to(dtype)
    hooks: list[tuple[str, int]] = []  # (module name, hook id), so remove_precision_hooks can undo them
    if keep_norms_fp32:
        for name, m in model.named_modules():
            if isinstance(m, _NORMS):
                m.float()
                hooks.append((name, m.register_forward_pre_hook(lambda mod, args: _cast(args, torch.float32)).id))
                hooks.append((name, m.register_forward_hook(lambda mod, args, out, d=dtype: _cast(out, d)).id))
    hooks.append(("", model.register_forward_pre_hook(
        lambda mod, args, kwargs, d=dtype: (_cast(args, d), _cast(kwargs, d)), with_kwargs=True).id))
    hooks.append(("", model.register_forward_hook(lambda mod, args, out: _cast(out, torch.float32)).id))
    model._slimkit_precision = str(dtype).removeprefix("torch.")  # type: ignore[assignment]
    model._slimkit_precision_hooks = hooks  # type: ignore[assignment]
    return model


def remove_precision_hooks(model: nn.Module) -> nn.Module:
    """Undo the casting hooks of :func:`to_precision` (also on a deep copy); dtypes are left as they are."""
    for name, hook_id in getattr(model, "_slimkit_precision_hooks", []):
        mod = model.get_submodule(name) if name else model
        for table in ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                      "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(mod, table, {}).pop(hook_id, None)
    for attr in ("_slimkit_precision_hooks", "_slimkit_precision"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def _is_half(model: nn.Module) -> bool:
    return bool(getattr(model, "_slimkit_precision", None)) or any(
        p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())


HALF = ExportForm(
    "half", _is_half, remove_precision_hooks,
    float_note="exported as ONNX {precision} from the float32 copy of the half-precision model (its input/output "
               "casting hooks do not export).")
"""fp16/bf16 weights with the input/output casting hooks of this pass (declared to the registry)."""


@register_pass(PrecisionConfig, rebuild=lambda model, cfg, manifest: _rebuild(model, cfg, manifest), export=HALF)
def precision(model: nn.Module, cfg: PrecisionConfig, ctx: PassContext) -> nn.Module:
    """fp16 or bf16 by ``cfg.method``."""
    return to_precision(model, torch.float16 if cfg.method == "fp16" else torch.bfloat16, cfg.keep_norms_fp32)


def _rebuild(model: nn.Module, cfg: PrecisionConfig, manifest: dict[str, Any]) -> nn.Module:
    """Cast the fresh model (and install the casting hooks) so the half-precision checkpoint loads as is."""
    return precision(model, cfg, PassContext())


register_pass(FP16Config, rebuild=_rebuild, export=HALF)(precision)
register_pass(BF16Config, rebuild=_rebuild, export=HALF)(precision)
