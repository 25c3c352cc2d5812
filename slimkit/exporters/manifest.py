"""Module shapes: record the constructor shape of every Conv/Linear/Norm/Embedding layer, and resize the
layers of a freshly built model to the recorded shapes (so a structurally pruned model can be rebuilt
from its architecture spec plus the manifest)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from slimkit.errors import ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["module_shape", "module_shapes", "resize_to_shapes"]

# (base class, attributes that define its shape), checked in order: the first match wins.
_SHAPED: list[tuple[type[nn.Module], tuple[str, ...]]] = [
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                               "groups", "transposed", "output_padding", "padding_mode")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._NormBase, ("num_features", "affine", "track_running_stats")),
    (nn.LayerNorm, ("normalized_shape", "elementwise_affine")),
    (nn.GroupNorm, ("num_groups", "num_channels", "affine")),
    (nn.RMSNorm, ("normalized_shape", "elementwise_affine")),
    (nn.Embedding, ("num_embeddings", "embedding_dim", "padding_idx")),
]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def module_shape(module: nn.Module) -> dict[str, Any] | None:
    """``{"class": "pkg.mod.Class", <shape attributes>, "bias": bool}`` for a shaped layer, else None."""
    for base, attrs in _SHAPED:
        if isinstance(module, base):
            shape: dict[str, Any] = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
            for a in attrs:
                if hasattr(module, a):
                    shape[a] = _jsonable(getattr(module, a))
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm)):
                shape["bias"] = getattr(module, "bias", None) is not None
            return shape
    return None


def module_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every Conv/Linear/Norm/Embedding layer, by qualified module name."""
    out = {}
    for name, module in model.named_modules():
        shape = module_shape(module)
        if shape is not None:
            out[name] = shape
    return out


def _new_param(old: torch.Tensor | None, shape: tuple[int, ...], fill: float | None = None) -> Any:
    if old is None:
        return None
    t = torch.empty(shape, dtype=old.dtype, device=old.device)
    if fill is not None:
        t.fill_(fill)
    return nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t


def _resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A copy of ``module`` (same class, same extra attributes) with the recorded shape and parameters
    of that shape (values to be loaded from the state)."""
    new = copy.deepcopy(module)
    for key, value in shape.items():
        if key in ("class", "bias"):
            continue
        setattr(new, key, tuple(value) if isinstance(value, list) else value)
    if isinstance(new, nn.modules.conv._ConvNd):
        if new.transposed:
            w_shape = (new.in_channels, new.out_channels // new.groups, *new.kernel_size)
        else:
            w_shape = (new.out_channels, new.in_channels // new.groups, *new.kernel_size)
        new.weight = _new_param(new.weight, w_shape)
        new.bias = _new_param(new.bias, (new.out_channels,))
    elif isinstance(new, nn.Linear):
        new.weight = _new_param(new.weight, (new.out_features, new.in_features))
        new.bias = _new_param(new.bias, (new.out_features,))
    elif isinstance(new, nn.modules.batchnorm._NormBase):
        n = (new.num_features,)
        new.weight, new.bias = _new_param(new.weight, n), _new_param(new.bias, n)
        if new.running_mean is not None:
            new.running_mean = _new_param(new.running_mean, n, 0.0)
            new.running_var = _new_param(new.running_var, n, 1.0)
    elif isinstance(new, (nn.LayerNorm, nn.RMSNorm)):
        new.normalized_shape = tuple(new.normalized_shape)
        new.weight = _new_param(new.weight, new.normalized_shape)
        if getattr(new, "bias", None) is not None:
            new.bias = _new_param(new.bias, new.normalized_shape)
    elif isinstance(new, nn.GroupNorm):
        new.weight = _new_param(new.weight, (new.num_channels,))
        new.bias = _new_param(new.bias, (new.num_channels,))
    elif isinstance(new, nn.Embedding):
        new.weight = _new_param(new.weight, (new.num_embeddings, new.embedding_dim))
    return new


def resize_to_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> list[str]:
    """Replace every layer whose recorded shape differs from ``model``'s with a resized instance of the
    same class. Returns the names of the replaced layers. Raises ModelLoadError when a recorded layer is
    missing or of another class (the spec does not build the saved architecture)."""
    if not shapes:
        return []
    if "" in shapes:
        raise ModelLoadError("the saved model is itself a single shaped layer; resize it before loading.")
    changed = []
    for name, shape in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelLoadError(f"the rebuilt model has no layer '{name}' recorded in the manifest.",
                                 hint="The spec builds another architecture than the one saved.") from None
        current = module_shape(module)
        if current is None or current["class"] != shape.get("class"):
            got = current["class"] if current else type(module).__name__
            raise ModelLoadError(f"layer '{name}' is a {got} in the rebuilt model but a {shape.get('class')} "
                                 "in the manifest.", hint="The spec builds another architecture than the one saved.")
        if current != shape:
            model.set_submodule(name, _resized(module, shape))
            changed.append(name)
    if changed:
        log.info("resized %d layer(s) from the manifest: %s", len(changed), ", ".join(changed))
    return changed
