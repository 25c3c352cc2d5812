"""Load and re-evaluate the models a run saved, from their files alone (no pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from slimkit.errors import RunError


def _locate(run_dir: Path, stage: str) -> tuple[Any, Path, int]:
    from slimkit.config.recipe import parse_recipe
    from slimkit.pipeline.runner import stage_dirname

    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise RunError(f"{run_dir} is not a slimkit run directory (no recipe.yaml).",
                       hint="Give the directory that `slimkit run` wrote, e.g. runs/demo.")
    recipe = parse_recipe(yaml.safe_load(recipe_file.read_text()), source=str(recipe_file))
    if stage == "final":
        return recipe, run_dir / "final", len(recipe.stages)
    if stage == "baseline":
        return recipe, run_dir / "baseline", 0
    try:
        i = int(stage)
        cfg = recipe.stages[i]
    except (ValueError, IndexError):
        raise RunError(f"unknown stage {stage!r}; use final, baseline or 0..{len(recipe.stages) - 1}.") from None
    return recipe, run_dir / "stages" / stage_dirname(i, cfg), i + 1


def load_saved(run_dir: Path, stage: str = "final") -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Rebuild the saved model of ``stage`` and return it with example inputs."""
    from slimkit.data import load_data
    from slimkit.models import build_model
    from slimkit.pipeline.runner import _restore, _Run

    recipe, directory, upto = _locate(run_dir, stage)
    if not (directory / "manifest.json").exists():
        raise RunError(f"{directory} holds no saved model; the run may not have reached it.",
                       hint="Finish it with `slimkit run RECIPE --out DIR --resume`.")
    run = _Run(recipe, run_dir)
    run.bundle = load_data(recipe.data)
    run.build = lambda: build_model(recipe.model, input_shape=run.bundle.input_shape,
                                    num_classes=run.bundle.num_classes, seed=recipe.seed)
    model = _restore(run, directory, list(recipe.stages[:upto]))
    return model, run.bundle.example_inputs


def evaluate_saved(run_dir: Path, stage: str = "final") -> dict[str, Any]:
    """Evaluate a saved model on its recipe's data; size is the bytes of its saved file. On unlabelled data
    (or with ``evaluate.fidelity``), fidelity is measured against the run's saved baseline, as in the run."""
    from slimkit.data import load_data
    from slimkit.evaluation import evaluate_model

    recipe, directory, _ = _locate(run_dir, stage)
    model, example = load_saved(run_dir, stage)
    bundle = load_data(recipe.data)
    loader = bundle.test if recipe.evaluate.split == "test" else (bundle.val or bundle.test)
    reference = None
    if not bundle.labelled or recipe.evaluate.fidelity:
        reference = model if stage == "baseline" else load_saved(run_dir, "baseline")[0]
    return evaluate_model(model, loader if bundle.labelled else None, example_inputs=example,
                          latency=recipe.evaluate.latency, artifact=directory / "model.safetensors", run_dir=run_dir,
                          reference=reference, fidelity_loader=loader)
