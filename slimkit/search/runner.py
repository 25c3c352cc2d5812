"""Constraint search: propose recipes, run each through :func:`slimkit.pipeline.runner.run_recipe`, keep the
best that meets the base recipe's constraints.

    result = slimkit.search("recipes/search/digits.yaml", out="runs/search-digits")

Writes ``<out>/trials/<n>/`` (one ordinary run directory per trial), ``<out>/baseline/`` (the baseline,
trained and evaluated once for all trials), ``<out>/best/`` (a copy of the best feasible trial's run),
``<out>/search.json`` (every trial: params, metrics, constraints, feasible, objective; rewritten atomically
after each trial), ``search.md`` and ``search.html``. Light to import: Optuna and Ray load when a search runs.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
import types
from pathlib import Path
from typing import Any

from slimkit.config.search import SearchPlan, build_plan, coerce_plan
from slimkit.progress import track
from slimkit.search.records import FINISHED, Book, load_records, stage_names
from slimkit.search.trial import objective_value, run_trial, violations

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the search
class _LocalExecutor:
    """Runs trials one after the other in this process."""

    capacity = 1

    def __init__(self) -> None:
        self.queue: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> _LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, n: int, *args: Any, **kwargs: Any) -> None:
        self.queue.append((n, args, kwargs))

    def wait(self) -> tuple[int, dict[str, Any]]:
        n, args, kwargs = self.queue.pop(0)
        return n, run_trial(*args, **kwargs)


def prepare_baseline(base: dict[str, Any], out: Path) -> tuple[Path, dict[str, Any]]:
    """Run the resolved recipe ``base`` without stages into ``<out>/baseline/`` once (reused when its report
    exists); trials (and auto's profiling) start from it. Returns (directory, baseline METRICS)."""
    from slimkit.pipeline.runner import run_recipe

    bdir = out / "baseline"
    report_file = bdir / "report.json"
    if report_file.exists():
        return bdir, json.loads(report_file.read_text())["baseline"]
    data = copy.deepcopy(base)
    data.update(stages=[], constraints={}, export={**data["export"], "formats": ["safetensors"]})
    if data["evaluate"].get("latency"):  # deployed (onnxruntime) latency is measured by each trial, paired
        data["evaluate"]["latency"] = {**data["evaluate"]["latency"], "runtime": "torch"}
    with track("search: baseline", total=None):
        report = run_recipe(data, out=bdir, resume=(bdir / "state.json").exists(), tracking=False)
    return bdir, report["baseline"]


def search(config: Any, out: str | Path | None = None, *, resume: bool = False,
           tracking: Any = None) -> dict[str, Any]:
    """Run the search described by ``config`` (a YAML path, a mapping, a SearchConfig) into ``out``
    (default ``runs/<name>``) and return the content of ``search.json``.

    ``tracking`` (as for :func:`slimkit.pipeline.runner.run_recipe`: None follows the base recipe's
    ``tracking:`` block, False is off, a TrackingConfig replaces it): the finished search is logged to MLflow
    as one run with a nested run per trial."""
    plan = coerce_plan(config)
    cfg = plan.config
    out = Path(out) if out is not None else Path("runs") / cfg.name
    from slimkit.pipeline.state import RunLock
    from slimkit.pipeline.tracking import resolve_tracking

    tracked = resolve_tracking(plan.base.get("tracking"), tracking)  # MLflow missing: before any compute
    with RunLock(out):
        records = load_records(plan, out, resume)
        from slimkit.search.optuna_backend import OptunaStudy

        study = OptunaStudy(plan, out, records)
        baseline_dir, baseline = prepare_baseline(plan.base, out) if plan.share_baseline else (None, None)
        book = Book(plan, out, records, baseline)
        book.front = study.front(records)
        if cfg.backend == "ray":
            from slimkit.search.ray_backend import RayExecutor

            executor: Any = RayExecutor(workers=cfg.workers, address=cfg.address)
        else:
            executor = _LocalExecutor()
        finished = sum(r["state"] in FINISHED for r in records)
        todo = max(0, cfg.trials - finished)
        t0 = time.monotonic()
        kwargs: dict[str, Any] = {"metric": plan.metric, "baseline_dir": str(baseline_dir) if baseline_dir else None,
                                  "base_dir": str(plan.base_dir)}
        if plan.multi:
            kwargs["also"] = [m for m, _ in plan.objectives[1:]]
        with track(f"search {cfg.name}", total=cfg.trials) as task, executor:
            task.advance(finished)
            inflight: dict[int, Any] = {}
            asked = 0
            while True:
                while (len(inflight) < executor.capacity and asked < todo
                       and (cfg.timeout_s is None or time.monotonic() - t0 < cfg.timeout_s)):
                    handle, data, sampled = study.ask()
                    n = len(records)
                    records.append({"number": n, "state": "running", "params": sampled,
                                    "stages": stage_names(data), "dir": f"trials/{n}", "metrics": None,
                                    "constraints": None, "feasible": False, "objective": None, "error": None,
                                    "study_trial": handle.number,
                                    **{k: handle.user_attrs[k] for k in ("proposed_by", "refine", "refined_from")
                                       if k in handle.user_attrs}})
                    inflight[n] = handle
                    book.write()
                    executor.submit(n, data, str(out / "trials" / str(n)), **kwargs)
                    asked += 1
                if not inflight:
                    break
                n, result = executor.wait()
                records[n].update(result)
                records[n].pop("baseline", None)
                study.tell(inflight.pop(n), records[n])
                study.refine(records)
                book.front = study.front(records)
                data_now = book.write()
                task.advance()
                if data_now["best"] is not None:
                    task.update(best=data_now["best"]["objective"])
        result = book.write(done=True)
        if tracked is not None:
            from slimkit.pipeline.tracking import log_search

            log_search(tracked, out, result)
        return result


def propose(config: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` parameter sets the search would propose (no compute): the same seed gives the same
    proposals."""
    from slimkit.search.optuna_backend import OptunaStudy

    plan = coerce_plan(config)
    study = OptunaStudy(plan, None, [])
    return [study.ask()[2] for _ in range(n)]


class _CallableModule(types.ModuleType):
    """A package that can also be called: ``slimkit.search(config, out=...)`` runs a search,
    ``slimkit.auto(model, ...)`` an automatic compression; the call goes to the module's ``__call_target__``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_target__(*args, **kwargs)  # type: ignore[attr-defined]


def make_callable(module_name: str, target: Any = None) -> None:
    """Make the package ``module_name`` callable as ``target`` (default :func:`search`; used by
    slimkit/search/__init__.py and slimkit/auto/__init__.py)."""
    module = sys.modules[module_name]
    module.__call_target__ = target or search  # type: ignore[attr-defined]
    if not isinstance(module, _CallableModule):
        module.__class__ = _CallableModule


__all__ = ["SearchPlan", "build_plan", "coerce_plan", "make_callable", "objective_value", "prepare_baseline", "propose",
           "run_trial", "search", "violations"]
