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
import hashlib
import json
import logging
import shutil
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.config.search import BASELINE_KEYS, SearchConfig, load_search, parse_search, read_yaml
from slimkit.errors import RecipeError, SlimkitError
from slimkit.progress import track
from slimkit.search import space as sp
from slimkit.search.records import FINISHED, Book, link_or_copy, load_records, stage_names

log = logging.getLogger(__name__)

_NOT_SEARCHABLE = {"name": "the run name is not a setting to search",
                   "constraints": "constraints are the limits every trial must meet, not a setting to search"}


@dataclass
class SearchPlan:
    """A validated search: the config, the base recipe (resolved, paths absolute) and the parameters."""

    config: SearchConfig
    base: dict[str, Any]
    params: list[sp.Param]
    source: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def share_baseline(self) -> bool:
        return self.config.share_baseline and not any(p.tokens[0] in BASELINE_KEYS for p in self.params)

    @property
    def metric(self) -> str:
        return self.config.objective.metric

    @property
    def direction(self) -> str:
        return self.config.objective.resolved_direction

    def fingerprint(self) -> str:
        """Changes when anything that changes the trials changes (resume refuses a different search)."""
        cfg = self.config.model_dump(mode="json", exclude={"trials", "timeout_s", "workers", "address", "backend"})
        cfg.pop("base", None)
        blob = json.dumps({"cfg": cfg, "base": self.base}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- validation
def search_error(problems: list[tuple[str, str]], source: str | None) -> RecipeError:
    """A RecipeError listing ``problems`` (duplicates dropped) with the search's own hint."""
    err = RecipeError(list(dict.fromkeys(problems)), source=source)
    err.hint = "Fix them and check again with `slimkit search CONFIG --check`."
    err.args = ("\n".join(err.message.splitlines()) + " " + err.hint,)
    return err


def check_search(base_value: Any, space: dict[str, Any], metric: str | None, *, base_dir: Path,
                 source: str | None = None) -> tuple[list[tuple[str, str]], dict[str, Any] | None, list[sp.Param]]:
    """Every problem of the base recipe and of the space (each bound and choice written into the base recipe
    and validated as a recipe). Returns (problems, resolved base or None, parameters). Computes nothing."""
    from slimkit.config.recipe import parse_recipe

    problems: list[tuple[str, str]] = []
    base_data: Any = base_value
    if isinstance(base_value, Path):
        file = base_value if base_value.is_absolute() else base_dir / base_value
        try:
            base_data = read_yaml(file)
        except RecipeError as exc:
            return [("base", m) for _, m in exc.problems], None, []
    try:
        recipe = parse_recipe(base_data, source=source, base_dir=base_dir)
    except RecipeError as exc:
        return [(_join("base", path), msg) for path, msg in exc.problems], None, []
    base = recipe.resolved()

    params: list[sp.Param] = []
    for path, spec in space.items():
        where = f"space.{path}"
        try:
            tokens = sp.parse_path(path)
        except sp.PathError as exc:
            problems.append((where, str(exc)))
            continue
        if isinstance(tokens[0], str) and tokens[0] in _NOT_SEARCHABLE:
            problems.append((where, _NOT_SEARCHABLE[tokens[0]]))
            continue
        if spec.kind == "categorical":
            values = list(spec.choices or [])
            if tokens == ["stages"]:
                for i, choice in enumerate(values):
                    values[i], why = sp.expand_stage_choice(choice, base["stages"])
                    if why:
                        problems.append((f"{where}.choices[{i}]", why))
            labels = [sp.choice_label(v, i) for i, v in enumerate(values)]
            if len({json.dumps(lb, sort_keys=True) for lb in labels}) != len(labels):
                labels = [f"choice{i}" if not sp._primitive(v) else v for i, v in enumerate(values)]
                if len({json.dumps(lb, sort_keys=True) for lb in labels}) != len(labels):
                    problems.append((f"{where}.choices", "the choices must be different from each other"))
            params.append(sp.Param(path, tokens, "categorical", labels=labels, values=values))
        else:
            params.append(sp.Param(path, tokens, spec.kind, low=spec.low, high=spec.high, log=spec.log,
                                   step=spec.step))
    broken = {path.removeprefix("space.").split(".choices")[0] for path, _ in problems}
    for p in params:
        if p.path in broken:
            continue
        contexts = _contexts(p, params, base)
        if not contexts:
            parents = [q.path for q in params if q is not p and q.kind == "categorical" and _prefix(q, p)]
            also = f" nor in any choice of {', '.join(parents)}" if parents else ""
            problems.append((f"space.{p.path}", f"addresses nothing in the base recipe{also}. "
                                                "Check the path against the recipe (e.g. stages[0].prune.sparsity)."))
            continue
        found: dict[str, list[str]] = {}  # problem -> the candidates that show it
        for where, value in p.candidates():
            data = copy.deepcopy(contexts[0])
            sp.set_path(data, p.tokens, value)
            try:
                parse_recipe(data, base_dir=base_dir)
            except RecipeError as exc:
                for path, msg in exc.problems:
                    found.setdefault(f"{path}: {msg}" if path else msg, []).append(where)
        n = len(p.candidates())
        for msg, wheres in found.items():
            # a problem every candidate shows (an unknown key) is the path's, said once
            if len(wheres) == n and n > 1:
                problems.append((f"space.{p.path}", msg))
            else:
                problems.extend((f"space.{p.path}.{w}", msg) for w in wheres)
    if metric in ("latency", "speedup", "throughput") and not base["evaluate"].get("latency"):
        problems.append(("objective.metric", f"{metric} needs latency measured: set evaluate.latency in the base recipe"))
    if base["constraints"].get("min_speedup") is not None and not base["evaluate"].get("latency"):
        problems.append(("base.constraints.min_speedup", "needs latency measured: set evaluate.latency"))
    return problems, base, params


def build_plan(cfg: SearchConfig, *, source: str | None, base_dir: Path) -> SearchPlan:
    """Validate the base recipe and every bound and choice of the space against it (no compute)."""
    problems, base, params = check_search(cfg.base, cfg.space, cfg.objective.metric, base_dir=base_dir,
                                          source=source)
    if problems:
        raise search_error(problems, source)
    assert base is not None
    return SearchPlan(cfg, base, params, source=source, base_dir=base_dir)


def _join(prefix: str, path: str) -> str:
    return prefix if not path else f"{prefix}.{path}"


def _prefix(q: sp.Param, p: sp.Param) -> bool:
    return len(q.tokens) < len(p.tokens) and p.tokens[:1] == q.tokens[:1] and (
        q.tokens == p.tokens[:len(q.tokens)] or q.tokens == ["stages"])


def _contexts(p: sp.Param, params: list[sp.Param], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Recipes in which ``p`` is active: the base, or the base with a choice of a parent parameter."""
    out = [base] if sp.is_active(base, p.tokens) else []
    for q in params:
        if q is p or q.kind != "categorical" or not _prefix(q, p):
            continue
        for v in q.values:
            d = copy.deepcopy(base)
            if sp.set_path(d, q.tokens, v) and sp.is_active(d, p.tokens):
                out.append(d)
    return out


def coerce_plan(config: Any) -> SearchPlan:
    """A SearchPlan, a SearchConfig, a mapping or a path to a YAML file -> a validated SearchPlan."""
    if isinstance(config, SearchPlan):
        return config
    if isinstance(config, SearchConfig):
        return build_plan(config, source=None, base_dir=Path.cwd())
    if isinstance(config, dict):
        return parse_search(config, source="<dict>", base_dir=Path.cwd())
    if isinstance(config, str | Path):
        return load_search(config)
    raise search_error([("", f"expected a search config path, mapping or SearchConfig, got {type(config).__name__}")],
                       None)


# ---------------------------------------------------------------------------------------------- one trial
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
        report = run_recipe(recipe, out=trial_dir, resume=resume)
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
    if report.get("stopped_early"):
        rec.update(state="pruned", feasible=False, objective=None, stopped_early=report["stopped_early"])
    elif value is None:
        rec.update(state="failed", feasible=False, error=f"the objective {metric} was not measured")
    return rec


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
        report = run_recipe(data, out=bdir, resume=(bdir / "state.json").exists())
    return bdir, report["baseline"]


def search(config: Any, out: str | Path | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Run the search described by ``config`` (a YAML path, a mapping, a SearchConfig) into ``out``
    (default ``runs/<name>``) and return the content of ``search.json``."""
    plan = coerce_plan(config)
    cfg = plan.config
    out = Path(out) if out is not None else Path("runs") / cfg.name
    from slimkit.pipeline.state import RunLock

    with RunLock(out):
        records = load_records(plan, out, resume)
        from slimkit.search.optuna_backend import OptunaStudy

        study = OptunaStudy(plan, out, records)
        baseline_dir, baseline = prepare_baseline(plan.base, out) if plan.share_baseline else (None, None)
        book = Book(plan, out, records, baseline)
        if cfg.backend == "ray":
            from slimkit.search.ray_backend import RayExecutor

            executor: Any = RayExecutor(workers=cfg.workers, address=cfg.address)
        else:
            executor = _LocalExecutor()
        finished = sum(r["state"] in FINISHED for r in records)
        todo = max(0, cfg.trials - finished)
        t0 = time.monotonic()
        kwargs = {"metric": plan.metric, "baseline_dir": str(baseline_dir) if baseline_dir else None,
                  "base_dir": str(plan.base_dir)}
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
                                    "constraints": None, "feasible": False, "objective": None, "error": None})
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
                data_now = book.write()
                task.advance()
                if data_now["best"] is not None:
                    task.update(best=data_now["best"]["objective"])
        return book.write(done=True)


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
           "run_trial",
           "search", "violations"]
