"""Which layers may be pruned, and binary masks over their weights.

A mask is a bool tensor shaped like the weight of one module (``True`` = keep), keyed by the module's
qualified name. Masks are applied in place under ``no_grad``, so the model stays a plain
model with zeros in its weights: no ``torch.nn.utils.prune`` reparametrization, nothing extra to save.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimkit.config.layers import LayerFilterFn, is_skipped

log = logging.getLogger(__name__)

DEFAULT_INCLUDE: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d", "Conv3d")
"""Class names of the layers pruned by default (subclasses match too, see :func:`eligible_layers`)."""


def _class_names(module: nn.Module) -> list[str]:
    return [c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object)]


def _is_norm(module: nn.Module) -> bool:
    return any("Norm" in name for name in _class_names(module))


def eligible_layers(
    model: nn.Module,
    include: Iterable[str] = DEFAULT_INCLUDE,
    skip: Iterable[str] = (),
    min_numel: int = 0,
    filter_fn: LayerFilterFn | None = None,
) -> dict[str, nn.Module]:
    """The modules whose ``weight`` may be pruned, by qualified name, in module order.

    A module is eligible when its class name, or the name of a class it derives from, is in ``include``
    (so a ``Conv2d`` subclass that does its own padding counts as ``Conv2d``), it is not skipped (``skip``,
    ``filter_fn``: :mod:`slimkit.config.layers`), and its ``weight`` is a floating-point ``nn.Parameter`` with at least
    ``min_numel`` elements. Norm layers are never eligible, and biases are never part of a mask. A weight
    shared by several modules is listed once, under the first name. Weights that are not plain parameters
    (``torch.nn.utils.prune`` or ``parametrize`` reparametrizations) are skipped; see
    :func:`reparametrized_layers`.
    """
    include = set(include)
    skip = list(skip)
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not name or not include.intersection(_class_names(module)) or _is_norm(module):
            continue
        if is_skipped(name, module, skip, filter_fn):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
            continue
        if not weight.is_floating_point() or weight.numel() == 0 or weight.numel() < min_numel:
            continue
        if id(weight) in seen:
            log.debug("%s shares its weight with an earlier layer; counted once", name)
            continue
        seen.add(id(weight))
        out[name] = module
    return out


def reparametrized_layers(model: nn.Module, include: Iterable[str] = DEFAULT_INCLUDE, skip: Iterable[str] = (),
                          filter_fn: LayerFilterFn | None = None) -> list[str]:
    """Names of included modules whose weight is computed (``weight_orig`` from ``torch.nn.utils.prune``,
    or ``torch.nn.utils.parametrize``): writing zeros into such a weight would not last."""
    include = set(include)
    skip = list(skip)
    names = []
    for name, module in model.named_modules():
        if not name or not include.intersection(_class_names(module)) or is_skipped(name, module, skip, filter_fn):
            continue
        if hasattr(module, "weight_orig") or parametrize.is_parametrized(module, "weight"):
            names.append(name)
    return names


def masks_from_zeros(layers: Mapping[str, nn.Module], *, only_sparse: bool = False) -> dict[str, torch.Tensor]:
    """``{name: weight != 0}`` for each layer; with ``only_sparse`` only layers holding at least one zero."""
    masks = {}
    with torch.no_grad():
        for name, module in layers.items():
            mask = module.weight != 0
            if only_sparse and bool(mask.all()):
                continue
            masks[name] = mask
    return masks


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the weights where the mask is ``False``, in place under ``no_grad``.

    ``masked_fill_`` rather than ``mul_``: the same for finite weights, and a pruned ``inf`` becomes 0, not
    NaN. When calling this every training step, pass masks that already live on the weights' device (as
    :func:`prepare_masks` returns them) so no copy is made per step.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            weight.masked_fill_(~mask.to(device=weight.device, dtype=torch.bool), 0)


def prepare_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check masks against the model (known module names, matching shapes) and move each to its weight's
    device as bool tensors, ready for repeated :func:`apply_masks_` calls. Raises ``ConfigError`` on a mismatch."""
    from slimkit.errors import ConfigError

    modules = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        module = modules.get(name)
        weight = getattr(module, "weight", None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            raise ConfigError(f"mask for '{name}' names no module with a weight in this model.",
                              hint="Key masks by qualified module name (model.named_modules()).")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ConfigError(f"mask for '{name}' has shape {tuple(mask.shape)}, "
                              f"but the weight has shape {tuple(weight.shape)}.")
        out[name] = mask.to(device=weight.device, dtype=torch.bool)
    return out


def layer_sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero entries in ``module.weight``."""
    weight = module.weight
    return float((weight == 0).sum().item()) / max(weight.numel(), 1)


def overall_sparsity(layers: Mapping[str, nn.Module]) -> float:
    """Fraction of exactly-zero entries over all the layers' weights together."""
    zeros = sum(int((m.weight == 0).sum().item()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return zeros / total if total else 0.0
