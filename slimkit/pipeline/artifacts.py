"""Load and re-evaluate the models a run saved, from their files alone (no pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import read_yaml
from slimkit.errors import RunError


def locate_stage(run_dir: Path, stage: str) -> tuple[Any, Path, int]:
    """The run's resolved recipe, the directory of ``stage`` (final, baseline or a stage index) and how many
    stages ran before it was saved."""
    from slimkit.config.recipe import parse_recipe
    from slimkit.pipeline.runner import stage_dirname

    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise RunError(f"{run_dir} is not a slimkit run directory (no recipe.yaml).",
                       hint="Give the directory that `slimkit run` wrote, e.g. runs/demo.")
    recipe = parse_recipe(read_yaml(recipe_file), source=str(recipe_file))
    _check_recipe_file(run_dir, recipe, recipe_file)
    if stage == "final":  # the delivered model: it may be an earlier stage's (Recipe.deliver)
        upto = len(recipe.stages)
        if (run_dir / "final" / "manifest.json").exists():
            from slimkit.exporters.safetensors_io import load_manifest

            applied = (load_manifest(run_dir / "final").get("spec") or {}).get("stages_applied", upto)
            upto = applied if isinstance(applied, int) and 0 <= applied <= upto else upto
        return recipe, run_dir / "final", upto
    if stage == "baseline":
        return recipe, run_dir / "baseline", 0
    try:
        i = int(stage)
        if i < 0:
            raise IndexError(i)
        cfg = recipe.stages[i]
    except (ValueError, IndexError):
        raise RunError(f"unknown stage {stage!r}; use final, baseline or 0..{len(recipe.stages) - 1}.") from None
    return recipe, run_dir / "stages" / stage_dirname(i, cfg), i + 1


def _check_recipe_file(run_dir: Path, recipe: Any, recipe_file: Path) -> None:
    """RunError when ``recipe.yaml`` is not the recipe the run used (edited, or damaged yet still valid):
    its hash must match ``state.json``'s and, for a finished run, it must equal the report's resolved recipe."""
    import json

    from slimkit.pipeline.state import RunState, recipe_hash

    resolved = recipe.resolved()
    problem = None
    if (run_dir / "state.json").exists() and RunState(run_dir).data.get("recipe_hash") != recipe_hash(resolved):
        problem = "its model, data, seed or stages differ from those state.json records"
    elif (run_dir / "report.json").is_file():
        try:
            used = json.loads((run_dir / "report.json").read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError, RecursionError, AttributeError):
            used = None
        if isinstance(used, dict) and json.dumps(used, sort_keys=True, default=str) != json.dumps(
                resolved, sort_keys=True, default=str):
            problem = "it differs from the resolved recipe in report.json"
    if problem:
        raise RunError(f"{recipe_file} is not the recipe this run used: {problem} (edited or damaged).",
                       hint="Restore it, or run the recipe again into a new directory.")


def load_saved(run_dir: Path, stage: str = "final") -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Rebuild the saved model of ``stage`` and return it with example inputs."""
    from slimkit.pipeline.runner import restore_saved

    recipe, directory, upto = locate_stage(run_dir, stage)
    if not (directory / "manifest.json").exists():
        raise RunError(f"{directory} holds no saved model; the run may not have reached it.",
                       hint="Finish it with `slimkit run RECIPE --out DIR --resume`.")
    model, bundle = restore_saved(recipe, run_dir, directory, upto)
    return model, bundle.example_inputs


def evaluate_saved(run_dir: Path, stage: str = "final") -> dict[str, Any]:
    """Evaluate a saved model on its recipe's data; size is the bytes of its saved file. On unlabelled data
    (or with ``evaluate.fidelity``), fidelity is measured against the run's saved baseline, as in the run."""
    from slimkit.data import load_data
    from slimkit.evaluation import evaluate_model

    recipe, directory, _ = locate_stage(run_dir, stage)
    model, example = load_saved(run_dir, stage)
    bundle = load_data(recipe.data)
    loader = bundle.test if recipe.evaluate.split == "test" else (bundle.val or bundle.test)
    reference = None
    if not bundle.labelled or recipe.evaluate.fidelity:
        reference = model if stage == "baseline" else load_saved(run_dir, "baseline")[0]
    return evaluate_model(model, loader if bundle.labelled else None, example_inputs=example,
                          latency=recipe.evaluate.latency, artifact=directory / "model.safetensors", run_dir=run_dir,
                          reference=reference, fidelity_loader=loader)
