"""One trial of a search: run a proposed recipe through the pipeline runner in its own run directory and
score it (objective value, constraint violations). Used by the local executor (slimkit/search/runner.py)
and by Ray workers (slimkit/search/ray_backend.py)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from slimkit.errors import RecipeError, SlimkitError
from slimkit.search.records import link_or_copy

log = logging.getLogger(__name__)


def objective_value(metric: str, baseline: dict[str, Any], final: dict[str, Any]) -> float | None:
    """The objective of a finished run from its report's baseline and final metrics (None: not measured)."""
    from slimkit.pipeline.constraints import speedup

    if metric == "latency":
        v = (final.get("latency_ms") or {}).get("median")
    elif metric == "size_ratio":
        b, f = baseline.get("size_bytes"), final.get("size_bytes")
        v = None if not b or f is None else f / b
    elif metric == "speedup":
        v = speedup(baseline, final)
    elif metric == "accuracy_drop":
        b, f = baseline.get("accuracy"), final.get("accuracy")
        v = None if b is None or f is None else b - f
    else:
        v = final.get(metric)
    return None if v is None else float(v)


def violations(rows: list[dict[str, Any]]) -> list[float]:
    """One number per constraint, <= 0 when met (Optuna's convention): the excess relative to the limit;
    1.0 for a constraint that was not measured."""
    out = []
    for r in rows:
        if r["met"] is True:
            out.append(0.0)
        elif r["met"] is None or r["value"] is None:
            out.append(1.0)
        else:
            limit, value = float(r["limit"]), float(r["value"])
            excess = value - limit if r["name"].startswith("max_") else limit - value
            out.append(max(excess, 1e-9) / max(abs(limit), 1e-6))
    return out


def _seed_trial(trial_dir: Path, recipe: Any, baseline_dir: Path) -> None:
    """Give a fresh trial directory the shared baseline, as if the runner had trained it there; the
    runner then resumes from it (its resume path restores the baseline from its checkpoint)."""
    from slimkit.pipeline.state import RunState, recipe_hash

    metrics = json.loads((baseline_dir / "state.json").read_text())["baseline"]
    trial_dir.mkdir(parents=True, exist_ok=True)
    if (trial_dir / "baseline").exists():
        shutil.rmtree(trial_dir / "baseline")
    shutil.copytree(baseline_dir / "baseline", trial_dir / "baseline", copy_function=link_or_copy)
    state = RunState(trial_dir)
    state.start(recipe_hash(recipe.resolved()), resume=False)
    state.data["baseline"] = metrics
    state.save()


def run_trial(recipe_data: dict[str, Any], trial_dir: str | Path, *, metric: str,
              baseline_dir: str | Path | None = None, base_dir: str | Path | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Validate one proposed recipe and run it into ``trial_dir``. Returns the trial's record fields:
    state (``complete`` or ``failed``), metrics, constraints, feasible, violations, objective, verdict,
    seconds, error. Runs in this process or in a Ray worker; never raises a SlimkitError."""
    from slimkit.config.recipe import parse_recipe
    from slimkit.pipeline.runner import run_recipe

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    trial_dir = Path(trial_dir)
    try:
        recipe = parse_recipe(recipe_data, source=f"trial {trial_dir.name}", base_dir=Path(base_dir or Path.cwd()))
    except RecipeError as exc:
        return {"state": "failed", "error": f"invalid proposed recipe: {exc}", "seconds": 0.0}
    try:
        resume = (trial_dir / "state.json").exists()
        if baseline_dir is not None and not resume:
            _seed_trial(trial_dir, recipe, Path(baseline_dir))
            resume = True
        report = run_recipe(recipe, out=trial_dir, resume=resume, tracking=False)  # the search logs trials
    except SlimkitError as exc:
        log.warning("trial %s failed: %s", trial_dir.name, exc)
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 3)}
    except Exception as exc:  # noqa: BLE001 - one failed trial must not end the search; the error is recorded
        log.exception("trial %s failed", trial_dir.name)
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 3)}
    rows = report["constraints"]
    value = objective_value(metric, report["baseline"], report["final"])
    rec: dict[str, Any] = {
        "state": "complete", "metrics": report["final"], "baseline": report["baseline"], "constraints": rows,
        "feasible": all(r["met"] is True for r in rows), "violations": violations(rows), "objective": value,
        "verdict": report["verdict"], "seconds": round(time.perf_counter() - t0, 3), "error": None,
    }
    if report.get("stopped_early"):  # evaluate.stop_early: a quality constraint already missed after a stage
        rec.update(state="pruned", feasible=False, objective=None, stopped_early=report["stopped_early"])
    elif value is None:
        rec.update(state="failed", feasible=False, error=f"the objective {metric} was not measured")
    return rec


__all__ = ["objective_value", "run_trial", "violations"]
