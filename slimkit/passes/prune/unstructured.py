"""Unstructured magnitude pruning: set the smallest weights of the eligible layers to zero.

``scope="layer"`` prunes every eligible layer to the target; ``scope="global"`` ranks all eligible
weights together under one threshold, so layers with small weights lose more. The exact count
``prune_count(sparsity, numel)`` = ceil(sparsity * numel) weights are pruned, so the target is
always reached, (per layer, or over all eligible weights), ties broken by position.
Pruning is monotone: weights that are already zero count toward the target and never regrow. The result
is a plain model with zeros in its weights (no ``torch.nn.utils.prune`` reparametrization).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from slimkit.config.layers import LayerFilterFn
from slimkit.config.prune import MagnitudePruneConfig
from slimkit.context import PassContext, PassRecord
from slimkit.errors import ConfigError
from slimkit.passes.prune.importance import Norm, magnitude_scores
from slimkit.passes.prune.masks import (
    DEFAULT_INCLUDE,
    apply_masks_,
    eligible_layers,
    layer_sparsity,
    overall_sparsity,
    reparametrized_layers,
)
from slimkit.passes.prune.schedule import sparsity_schedule
from slimkit.progress import track
from slimkit.registry import register_pass

log = logging.getLogger(__name__)

Scope = Literal["layer", "global"]


def prune_count(sparsity: float, numel: int) -> int:
    """How many of ``numel`` weights to prune for ``sparsity``: the smallest count that reaches it."""
    return min(numel, math.ceil(sparsity * numel - 1e-9))


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask over flat ``scores`` marking exactly the ``k`` smallest; ties go to the lowest positions."""
    prune = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return prune
    if k >= scores.numel():
        return ~prune
    threshold = torch.kthvalue(scores, k).values
    prune = scores < threshold
    need = k - int(prune.sum().item())
    if need > 0:
        ties = torch.nonzero(scores == threshold).flatten()[:need]
        prune[ties] = True
    return prune


def _layer_masks(layers: Mapping[str, nn.Module], sparsity: float, scope: Scope,
                 norm: Norm) -> dict[str, torch.Tensor]:
    """Keep-masks (``True`` = keep) reaching ``sparsity`` per layer or over all layers together."""
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, module in layers.items():
            w = module.weight
            prune = _smallest(magnitude_scores(w, norm).flatten(), prune_count(sparsity, w.numel()))
            masks[name] = (~prune).view_as(w) & (w != 0)
        return masks
    if scope != "global":
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}.")
    weights = [m.weight for m in layers.values()]
    device = weights[0].device
    flat = torch.cat([magnitude_scores(w, norm).flatten().to(device) for w in weights])
    prune = _smallest(flat, prune_count(sparsity, flat.numel()))
    start = 0
    for (name, _), w in zip(layers.items(), weights, strict=True):
        part = prune[start:start + w.numel()].view_as(w).to(w.device)
        masks[name] = ~part & (w != 0)
        start += w.numel()
    return masks


def magnitude_prune_(
    model: nn.Module,
    sparsity: float,
    scope: Scope = "global",
    *,
    norm: Norm = "l1",
    include: Iterable[str] = DEFAULT_INCLUDE,
    skip: Iterable[str] = (),
    min_numel: int = 0,
    filter_fn: LayerFilterFn | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude weights of the eligible layers in place; return the keep-masks.

    ``layers`` (``{qualified name: module}``) overrides the selection by ``include``/``skip``/
    ``min_numel``/``filter_fn`` (see :func:`slimkit.passes.prune.masks.eligible_layers`). The returned masks
    (``{name: bool tensor}``, ``True`` = nonzero) can be passed to
    :func:`slimkit.passes.finetune.loop.train_model` to keep the zeros while training.
    Raises :class:`~slimkit.errors.ConfigError` when no layer is eligible or ``sparsity`` is outside [0, 1).
    """
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}.")
    include, skip = list(include), list(skip)
    if layers is None:
        _check_prunable(model, include, skip, filter_fn)
        layers = _select(model, include, skip, min_numel, filter_fn)
    if not layers:
        return {}
    masks = _layer_masks(layers, sparsity, scope, norm)
    apply_masks_(model, masks)
    return masks


def _check_prunable(model: nn.Module, include: list[str], skip: list[str], filter_fn: LayerFilterFn | None) -> None:
    reparam = reparametrized_layers(model, include, skip, filter_fn)
    if reparam:
        raise ConfigError(
            f"layer(s) {', '.join(reparam[:5])} have a reparametrized weight (torch.nn.utils.prune or "
            f"parametrize); zeros written into it would not last.",
            hint="Call torch.nn.utils.prune.remove(module, 'weight') (or remove_parametrizations) first, "
                 "or skip those layers.")


def _select(model: nn.Module, include: list[str], skip: list[str], min_numel: int,
            filter_fn: LayerFilterFn | None) -> dict[str, nn.Module]:
    layers = eligible_layers(model, include, skip, min_numel, filter_fn)
    if not layers:
        raise ConfigError(
            f"no layer of {type(model).__name__} can be pruned with include={include}, skip={skip} (exclude= in "
            f"older recipes){', a filter_fn' if filter_fn is not None else ''}, min_numel={min_numel}.",
            hint="include lists module class names (e.g. Linear, Conv2d); skip lists glob patterns of "
                 "qualified module names or class names (e.g. 'fc', 'features.0*'). Widen include or narrow skip.")
    return layers


def _cfg_layers(model: nn.Module, cfg: MagnitudePruneConfig) -> dict[str, nn.Module]:
    return _select(model, list(cfg.include), list(cfg.skip), cfg.min_numel, cfg.filter_fn)


def sparsity_report(model: nn.Module, cfg: MagnitudePruneConfig | None = None) -> dict[str, float]:
    """``{layer name: fraction of zero weights}`` for the layers ``cfg`` makes eligible (the default
    Linear/Conv selection when ``cfg`` is None). Read-only."""
    if cfg is None:
        layers = eligible_layers(model)
    else:
        layers = eligible_layers(model, cfg.include, cfg.skip, cfg.min_numel, cfg.filter_fn)
    return {name: layer_sparsity(m) for name, m in layers.items()}


def eligible_sparsity(model: nn.Module, cfg: MagnitudePruneConfig | None = None) -> float:
    """Fraction of zero weights over all eligible weights together (what ``scope='global'`` targets)."""
    if cfg is None:
        return overall_sparsity(eligible_layers(model))
    return overall_sparsity(eligible_layers(model, cfg.include, cfg.skip, cfg.min_numel, cfg.filter_fn))


@dataclass
class PruneStep(PassRecord):
    """One pruning step: the ``target`` sparsity of the schedule, the eligible ``sparsity`` reached, and the
    fine-tuning after it (a TrainResult) when the config has ``finetune``."""

    key: ClassVar[str] = "prune_step"
    step: int
    target: float
    sparsity: float
    train_result: Any = None


@dataclass
class PruneStepsRecord(PassRecord):
    """The steps of a magnitude pruning stage, in order; it reads as the list of its steps."""

    key: ClassVar[str] = "prune_steps"
    steps: list[PruneStep] = field(default_factory=list)

    def __iter__(self):  # noqa: ANN204
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


@register_pass(MagnitudePruneConfig, default=True)
def magnitude_prune_pass(model: nn.Module, cfg: MagnitudePruneConfig, ctx: PassContext) -> nn.Module:
    """The ``prune`` pass (method ``magnitude``): prune in ``cfg.steps`` steps on ``cfg.schedule``; when
    ``cfg.finetune`` is given, fine-tune on ``ctx.train_loader`` after each step with the zeros held fixed.
    Its record is a :class:`PruneStepsRecord` (``ctx.extras["prune_steps"]``). A ``finetune`` section needs a
    train loader (checked by the registry before anything changes)."""
    from slimkit.passes.finetune.loop import resolve_amp, train_model

    # every check before the model is touched
    _check_prunable(model, list(cfg.include), list(cfg.skip), cfg.filter_fn)
    layers = _cfg_layers(model, cfg)
    if cfg.finetune is not None:
        resolve_amp(model, cfg.finetune.amp)

    targets = sparsity_schedule(cfg.sparsity, cfg.steps, cfg.schedule)
    record = ctx.add(PruneStepsRecord())
    with track("prune", total=len(targets)) as task:
        for step, target in enumerate(targets, start=1):
            masks = magnitude_prune_(model, target, cfg.scope, norm=cfg.norm, layers=layers)
            reached = overall_sparsity(layers)
            entry = PruneStep(step=step, target=target, sparsity=reached)
            log.info("prune step %d/%d: target %.4f, eligible sparsity %.4f", step, len(targets), target, reached)
            if cfg.finetune is not None:
                # the masks hold every zero of the eligible layers, including ones zero before pruning
                result = train_model(model, ctx.train_loader, cfg.finetune, val_loader=ctx.val_loader,
                                     seed=ctx.seed + step - 1, masks=masks,
                                     description=f"fine-tune (prune step {step}/{len(targets)})")
                entry.train_result = result
            record.steps.append(entry)
            task.advance()
            task.update(sparsity=reached)
    return model
