"""The verbs. Each takes a model and a frozen config and runs it through :func:`slimkit.registry.apply_pass`
(which finds the handler, checks that what it needs was given, and mutates the model in place, returning it
so calls chain)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.config.base import PassConfig
from slimkit.context import as_inputs
from slimkit.errors import ConfigError
from slimkit.registry import apply_pass

log = logging.getLogger(__name__)


def _verb(kind: str, model: nn.Module, config: PassConfig, kwargs: dict[str, Any]) -> nn.Module:
    if getattr(config, "kind", None) != kind:
        raise ConfigError(
            f"{kind}_ got a {type(config).__name__}, which is a '{getattr(config, 'kind', '?')}' config.",
            hint=f"Call slimkit.{getattr(config, 'kind', 'apply_pass')}_ or slimkit.apply_pass with it.",
        )
    return apply_pass(model, config, **kwargs)


def prune_(model: nn.Module, config: PassConfig, **kwargs: Any) -> nn.Module:
    """Prune in place: ``prune_(model, MagnitudePruneConfig(sparsity=0.8))``."""
    return _verb("prune", model, config, kwargs)


def quantize_(model: nn.Module, config: PassConfig, **kwargs: Any) -> nn.Module:
    """Quantize in place: ``quantize_(model, PTQConfig(...), calibration=loader)``."""
    return _verb("quantize", model, config, kwargs)


def lowrank_(model: nn.Module, config: PassConfig, **kwargs: Any) -> nn.Module:
    """Factorize in place: ``lowrank_(model, SVDConfig(energy=0.95))``."""
    return _verb("lowrank", model, config, kwargs)


def finetune(model: nn.Module, train_loader: Iterable[Any], config: PassConfig | None = None,
             **kwargs: Any) -> nn.Module:
    """Fine-tune in place with AMP where the device supports it, early stopping and the best checkpoint."""
    from slimkit.config.finetune import FinetuneConfig

    return _verb("finetune", model, config or FinetuneConfig(), {"train_loader": train_loader, **kwargs})


def distill(student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], config: PassConfig,
            **kwargs: Any) -> nn.Module:
    """Train ``student`` against ``teacher`` and return it."""
    return _verb("distill", student, config, {"teacher": teacher, "train_loader": train_loader, **kwargs})


def evaluate(model: nn.Module, loader: Iterable[Any] | None = None, *, example_inputs: Any = None,
             **kwargs: Any) -> dict[str, Any]:
    """Measure accuracy/F1, params, MACs, size on disk, sparsity and latency. See slimkit.evaluation."""
    from slimkit.evaluation import evaluate_model

    return evaluate_model(model, loader, example_inputs=as_inputs(example_inputs), **kwargs)


def export(model: nn.Module, path: str | Path, *, example_inputs: Any = None, **kwargs: Any) -> Any:
    """Export to ONNX (by suffix .onnx; needs ``example_inputs``) or safetensors + manifest (a directory, which
    does not), with a parity check."""
    from slimkit.exporters import export_model

    return export_model(model, Path(path), example_inputs=as_inputs(example_inputs), **kwargs)


def run_recipe(recipe: Any, out: str | Path | None = None, *, resume: bool = False,
               tracking: Any = None) -> dict[str, Any]:
    """Run a recipe (a path, a mapping or a Recipe) and return the report as a dict. ``tracking``: None follows
    the recipe's ``tracking:`` block, False turns it off, a ``slimkit.config.tracking.TrackingConfig`` logs
    the run to MLflow there (docs/tracking.md)."""
    from slimkit.pipeline.runner import run_recipe as _run

    return _run(recipe, out=out, resume=resume, tracking=tracking)
