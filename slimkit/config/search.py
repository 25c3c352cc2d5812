"""The search config: a base recipe, a space over its settings, an objective under the recipe's
constraints, and the budget. Validated with every problem and its path before any compute.

```yaml
name: search-digits
base: recipes/demo.yaml            # a recipe file (relative to the current directory) or an inline recipe
space:
  stages[0].prune.sparsity: {low: 0.5, high: 0.95}           # float
  stages[0].prune.finetune.epochs: {low: 1, high: 4}         # int (both bounds are integers)
  stages[0].prune.finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  stages[0].prune.scope: {choices: [layer, global]}          # categorical
  stages: {choices: [[prune], [prune, finetune]]}            # whole stage lists (pass names of the base stages)
objective: minimize size_bytes     # or {metric: accuracy, direction: maximize}
objectives: [maximize accuracy]    # optional: more objectives -> a multi-objective study (Pareto front)
trials: 20
```
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from slimkit._io import read_yaml
from slimkit.config import search_space as sp
from slimkit.config.base import StrictModel, validation_problems
from slimkit.errors import RecipeError

# metric -> default direction. ``latency`` is the final median latency in ms; ``size_ratio`` and
# ``speedup`` compare with the baseline; ``accuracy_drop`` is baseline minus final accuracy.
OBJECTIVE_METRICS: dict[str, str] = {
    "size_bytes": "minimize", "size_ratio": "minimize", "latency": "minimize", "params": "minimize",
    "nonzero_params": "minimize", "macs": "minimize", "accuracy_drop": "minimize",
    "accuracy": "maximize", "f1": "maximize", "fidelity": "maximize", "sparsity": "maximize",
    "throughput": "maximize", "speedup": "maximize",
}
_ALIASES = {"latency_ms": "latency", "size": "size_bytes", "bytes": "size_bytes"}

# Settings that change the baseline model or its evaluation: when searched, every trial trains its own.
BASELINE_KEYS = ("model", "data", "seed", "evaluate")


class ParamSpec(StrictModel):
    """One searched setting: ``{low, high}`` (int when both are integers, else float; ``log``, ``step``)
    or ``{choices: [...]}``. ``type`` forces ``int`` or ``float``."""

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = Field(None, gt=0)
    type: Literal["int", "float"] | None = None
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range or self.log or self.step is not None or self.type is not None:
                raise ValueError("give either choices or low/high (with log, step, type), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give both low and high (a range), or choices (a categorical)")
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.low >= self.high:
            raise ValueError(f"low must be < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log scale and step cannot be combined")
        if self.kind == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"an int range needs integer {name}, got {v}")
        return self

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        if self.type is not None:
            return self.type
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if ints else "float"


class ObjectiveConfig(StrictModel):
    """What the search optimizes over the trials that meet the base recipe's constraints."""

    metric: str
    direction: Literal["minimize", "maximize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_words(cls, data: Any) -> Any:
        if isinstance(data, str):  # "minimize size_bytes" or "size_bytes"
            words = data.split()
            if len(words) == 2 and words[0] in ("minimize", "maximize"):
                return {"metric": words[1], "direction": words[0]}
            if len(words) == 1:
                return {"metric": words[0]}
            raise ValueError(f"write 'minimize METRIC' or 'maximize METRIC', got {data!r}")
        return data

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        from slimkit.errors import did_you_mean

        v = _ALIASES.get(v, v)
        if v not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {v!r}.{did_you_mean(v, OBJECTIVE_METRICS)} "
                             f"Known: {', '.join(sorted(OBJECTIVE_METRICS))}")
        return v

    @property
    def resolved_direction(self) -> str:
        return self.direction or OBJECTIVE_METRICS[self.metric]


class RefineSpec(StrictModel):
    """A knob that trades quality for speed or size: when the queued trials are done and none is feasible, a
    point along it is tried next (:mod:`slimkit.search.refine`)."""

    param: str = Field(description="a numeric path of `space`")
    faster: Literal["low", "high"] = Field(description="the end of the knob that helps the `helps` constraints")
    helps: list[str] = Field(min_length=1, description="constraint names this end helps, e.g. min_speedup")
    max_steps: int = Field(3, ge=1, le=20, description="refinement trials at most")
    margin: float = Field(0.1, ge=0, lt=1, description="aim this fraction of the limit past it; a helped "
                          "constraint met by less than half of it counts as short")


class SearchConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base: Path | dict[str, Any] = Field(description="a recipe file, or an inline recipe mapping")
    space: dict[str, ParamSpec] = Field(min_length=1)
    objective: ObjectiveConfig = Field(description="the primary objective: the best trial is the feasible one best here")
    objectives: list[ObjectiveConfig] = Field(
        default_factory=list, max_length=4,
        description="further objectives searched together with `objective` (a multi-objective Optuna study; "
                    "the front is its non-dominated feasible trials)")
    trials: int = Field(20, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0, description="ask no new trial after this many seconds")
    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="ray: a cluster address; none starts Ray on this machine")
    workers: int = Field(1, ge=1, le=4096, description="ray: trials running at once")
    seed: int = Field(0, ge=0)
    storage: Literal["memory", "sqlite"] = "memory"
    startup_trials: int | None = Field(None, ge=1, description="random trials before TPE (default: trials/4, 2..10)")
    share_baseline: bool = Field(True, description="train and evaluate the baseline once for every trial")
    initial: list[dict[str, Any]] = Field(
        default_factory=list, max_length=100,
        description="parameter sets tried first, in order ({path: value}; a categorical value as its label or "
                    "its value; paths left out are sampled): a coarse start the sampler then refines")
    refine: list[RefineSpec] = Field(
        default_factory=list, max_length=8,
        description="knobs stepped toward the binding constraint while no trial is feasible (a secant step)")

    @model_validator(mode="after")
    def _backend(self) -> SearchConfig:
        metrics = [self.objective.metric, *(o.metric for o in self.objectives)]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each objective metric once: got {metrics}")
        if self.backend == "local" and self.workers != 1:
            raise ValueError("the local backend runs one trial at a time; use backend: ray for workers > 1")
        if self.backend == "local" and self.address is not None:
            raise ValueError("address is for backend: ray")
        unknown = sorted({k for point in self.initial for k in point} - set(self.space))
        if unknown:
            raise ValueError(f"initial names paths that are not in space: {unknown}")
        for r in self.refine:
            spec = self.space.get(r.param)
            if spec is None or spec.choices is not None:
                raise ValueError(f"refine names {r.param!r}, which is not a numeric path of space")
        return self

    @property
    def n_startup(self) -> int:
        return self.startup_trials or max(2, min(10, self.trials // 4))


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

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """Every objective as (metric, direction), the primary first."""
        return [(o.metric, o.resolved_direction) for o in (self.config.objective, *self.config.objectives)]

    @property
    def multi(self) -> bool:
        return bool(self.config.objectives)

    def fingerprint(self) -> str:
        """Changes when anything that changes the trials changes (resume refuses a different search)."""
        cfg = self.config.model_dump(mode="json", exclude={"trials", "timeout_s", "workers", "address", "backend"})
        cfg.pop("base", None)
        for key in ("objectives", "initial", "refine"):  # searches without them keep the fingerprint they had before
            if not cfg[key]:
                cfg.pop(key)
        base = {k: v for k, v in self.base.items() if k != "tracking"}  # logging changes no trial
        blob = json.dumps({"cfg": cfg, "base": base}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- validation
def search_error(problems: list[tuple[str, str]], source: str | None) -> RecipeError:
    """A RecipeError listing ``problems`` (duplicates dropped) with the search's own hint."""
    err = RecipeError(list(dict.fromkeys(problems)), source=source)
    err.hint = "Fix them and check again with `slimkit search CONFIG --check`."
    err.args = ("\n".join(err.message.splitlines()) + " " + err.hint,)
    return err


def check_search(base_value: Any, space: dict[str, Any], metric: str | list[str] | None, *, base_dir: Path,
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
                labels = [f"choice{i}" if not sp.is_primitive(v) else v for i, v in enumerate(values)]
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
    for m in [metric] if isinstance(metric, str) else (metric or []):
        if m in ("latency", "speedup", "throughput") and not base["evaluate"].get("latency"):
            problems.append(("objective.metric", f"{m} needs latency measured: set evaluate.latency in the base recipe"))
    if base["constraints"].get("min_speedup") is not None and not base["evaluate"].get("latency"):
        problems.append(("base.constraints.min_speedup", "needs latency measured: set evaluate.latency"))
    return problems, base, params


def build_plan(cfg: SearchConfig, *, source: str | None, base_dir: Path) -> SearchPlan:
    """Validate the base recipe and every bound and choice of the space against it (no compute)."""
    metrics = [cfg.objective.metric, *(o.metric for o in cfg.objectives)]
    problems, base, params = check_search(cfg.base, cfg.space, metrics, base_dir=base_dir, source=source)
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



def parse_search(data: Any, *, source: str | None = None, base_dir: Path | None = None) -> Any:
    """Validate a search config mapping, its base recipe and its space (every bound and choice applied
    to the base recipe and validated as a recipe). Returns a :class:`slimkit.search.runner.SearchPlan`;
    raises :class:`RecipeError` listing every problem with its path. Computes nothing."""
    base_dir = base_dir or Path.cwd()
    if not isinstance(data, dict):
        raise search_error([("", f"a search config is a mapping, got {type(data).__name__}")], source)
    try:
        cfg = SearchConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, SearchConfig)
        # the rest still gets checked, so every problem is listed at once: the base recipe and the
        # space entries that are well-formed on their own
        failed = {p.split(".")[0].split("[")[0] for p, _ in problems}
        base = data.get("base")
        base = Path(base) if isinstance(base, str) else base
        space: dict[str, Any] = data["space"] if isinstance(data.get("space"), dict) else {}
        good = {}
        for key, spec in space.items():
            try:
                good[key] = ParamSpec.model_validate(spec)
            except ValidationError:
                pass
        metric: list[str] | None = None
        if "objective" not in failed and "objectives" not in failed:
            metric = [ObjectiveConfig.model_validate(o).metric
                      for o in [data.get("objective"), *(data.get("objectives") or [])]]
        if "base" not in failed and isinstance(base, Path | dict):
            problems += check_search(base, good, metric, base_dir=base_dir, source=source)[0]
        raise search_error(problems, source) from None
    return build_plan(cfg, source=source, base_dir=base_dir)


def load_search(path: str | Path) -> Any:
    """Read and validate a YAML search config. Paths inside (``base``, the recipe's files) are relative
    to the current directory, as in recipes."""
    path = Path(path)
    return parse_search(read_yaml(path), source=str(path), base_dir=Path.cwd())


__all__ = ["OBJECTIVE_METRICS", "ObjectiveConfig", "ParamSpec", "RefineSpec", "SearchConfig", "SearchPlan", "build_plan", "check_search",
           "coerce_plan", "load_search", "parse_search", "search_error"]
