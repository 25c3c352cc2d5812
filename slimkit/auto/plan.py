"""From a model (or recipe) and auto's settings to an ordinary search config over an ordinary recipe.

:func:`base_recipe` validates the recipe and the ``auto`` settings before any compute and writes the
constraints, the evaluation (deployed latency on the chosen runtime, fidelity to the original model) and
the candidate stages into it. :func:`build_space` turns the measured profile and the applicable candidates
(:mod:`slimkit.auto.candidates`) into the search space: which technique lists, in a valid order, and how hard
to push each; the result is written as ``auto-search.yaml``, a config ``slimkit search`` runs as it is.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml

from slimkit.auto.candidates import Context, applicable
from slimkit.config.auto import AutoConfig
from slimkit.errors import RecipeError


def recipe_input(model_or_recipe: Any, data: str | None) -> dict[str, Any]:
    """A recipe mapping from a recipe path or mapping, or from a model: a built-in arch name or a
    ``package.module:factory`` entry point (trained first on ``data`` when it has no weights)."""
    if isinstance(model_or_recipe, dict):
        out = copy.deepcopy(model_or_recipe)
    elif isinstance(model_or_recipe, str | Path) and Path(model_or_recipe).suffix in (".yaml", ".yml"):
        from slimkit._io import read_yaml

        out = read_yaml(Path(model_or_recipe))
        if not isinstance(out, dict):
            raise RecipeError([("", f"a recipe is a mapping, got {type(out).__name__}")], source=str(model_or_recipe))
    elif isinstance(model_or_recipe, str):
        key = "entry_point" if ":" in model_or_recipe else "arch"
        name = model_or_recipe.replace(":", "-").replace(".", "-")[:40]
        out = {"name": name, "model": {key: model_or_recipe, "train": {}}}
    else:
        raise RecipeError([("", f"expected a recipe path or mapping, or a model name, got {type(model_or_recipe).__name__}")])
    if data is not None:
        out["data"] = {**(out.get("data") or {}), "name": data}
    return out


def base_recipe(recipe: dict[str, Any], settings: dict[str, Any], *, source: str | None = None
                ) -> tuple[dict[str, Any], AutoConfig]:
    """Validate the recipe with its ``auto`` block (overridden by ``settings``) as one recipe, before any
    compute; return (the resolved base recipe of the search, without stages yet, and the AutoConfig)."""
    from slimkit.config.recipe import parse_recipe

    data = copy.deepcopy(recipe)
    given = {k: v for k, v in settings.items() if v is not None}
    merged = dict(data.get("auto") or {})
    if "budget" in given or "budget_s" in given:
        merged.pop("budget", None)
        merged.pop("budget_s", None)
    merged.update(given)
    data["auto"] = merged
    r = parse_recipe(data, source=source, base_dir=Path.cwd())
    cfg = r.auto
    assert cfg is not None
    base = r.resolved()
    base.pop("auto", None)
    base["name"] = f"{r.name}-auto"[:64]
    base["stages"] = []
    base["evaluate"] = {**base["evaluate"], "fidelity": True, "stop_early": True, "latency": {
        "batch": cfg.batch, "warmup": 5, "repeats": cfg.latency_repeats, "threads": cfg.threads,
        "runtime": cfg.runtime}}
    base["export"] = {**base["export"], "formats": ["safetensors", "onnx"]}
    base["constraints"] = {}
    return base, cfg


def build_space(base: dict[str, Any], cfg: AutoConfig, profile: dict[str, Any], *, labelled: bool,
                name: str) -> dict[str, Any]:
    """The search config (a mapping ``slimkit search`` accepts) for ``base`` from the measured profile."""
    ctx = Context(cfg, labelled, profile)
    cands = applicable(ctx, cfg.techniques)
    if not cands:
        raise RecipeError([("auto.techniques", "no technique applies to this model and runtime")])
    structural = [c for c in cands if c.stage(ctx) is not None]
    recipe = copy.deepcopy(base)
    recipe["stages"] = [c.stage(ctx) for c in structural]
    recipe["constraints"] = cfg.constraints(labelled)
    space: dict[str, Any] = {}
    kinds = [next(iter(c.stage(ctx) or {})) for c in structural]
    lists = [list(sub) for n in range(len(kinds) + 1) for sub in itertools.combinations(kinds, n)]
    if len(cands) == len(structural):  # nothing but structural changes: at least one must run
        lists = [x for x in lists if x]
    if len(lists) > 1:
        space["stages"] = {"choices": lists}
    for c in cands:
        space.update(c.space(ctx))
    initial = coarse_start(ctx, cands, structural, kinds, lists, space)
    objective = "maximize speedup" if cfg.max_latency_ratio is not None else "minimize size_ratio"
    more = []
    if cfg.multi_objective:  # the front is searched: quality and bytes beside the primary objective
        more = ["maximize accuracy" if labelled else "maximize fidelity"]
        more += ["minimize size_ratio"] if cfg.max_latency_ratio is not None else ["maximize speedup"]
    # while nothing is feasible, the pruning depth is stepped toward the limit that binds (slimkit.search.refine)
    helps = [c for c in ("min_speedup", "max_size_ratio") if c in recipe["constraints"]]
    refine = [{"param": "stages[prune].target_macs", "faster": "low", "helps": helps}
              ] if helps and "stages[prune].target_macs" in space else []
    return {"name": name, "base": recipe, "space": space, "objective": objective, "objectives": more,
            "trials": cfg.trials, "initial": initial, "refine": refine,
            "timeout_s": cfg.budget_s, "seed": cfg.seed, "storage": "sqlite", "backend": cfg.backend,
            "address": cfg.address, "workers": cfg.workers, "share_baseline": True}


def coarse_start(ctx: Context, cands: list[Any], structural: list[Any], kinds: list[str], lists: list[list[str]],
                 space: dict[str, Any]) -> list[dict[str, Any]]:
    """The points tried first (``initial`` of the search): the final steps alone (e.g. int8 export), then each
    structural technique alone at its coarse settings with those final steps; the sampler refines from there."""
    final: dict[str, Any] = {}
    for c in cands:
        if c not in structural:
            for point in c.coarse(ctx)[:1]:
                final.update(point)
    out: list[dict[str, Any]] = []
    if [] in lists:
        out.append({**({"stages": "none"} if "stages" in space else {}), **final})
    for c, kind in zip(structural, kinds, strict=True):
        if [kind] not in lists:
            continue
        for point in c.coarse(ctx):
            out.append({**({"stages": kind} if "stages" in space else {}), **point, **final})
    return [p for p in out if p and all(k in space for k in p)]


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


__all__ = ["base_recipe", "build_space", "coarse_start", "dump", "recipe_input"]
