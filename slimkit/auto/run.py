"""``slimkit.auto(...)``: measure the model, build the space, search it, and deploy the chosen point.

Writes into ``out`` (default ``runs/<name>-auto``): ``profile.json`` (per-layer latency cost table and
sensitivity), ``auto-search.yaml`` (the generated search config: an ordinary recipe and space), everything
``slimkit search`` writes (``search.json``, ``study.db``, ``trials/<n>/``, ``baseline/``, ``best/``),
``chosen.yaml`` (the chosen trial's recipe: ``slimkit run chosen.yaml`` reproduces it), ``deploy/`` (its
ONNX artifact), ``auto.json``, ``auto.md`` and ``auto.html`` (the Pareto front plot and the verdict).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from slimkit._io import atomic_write_json, atomic_write_text
from slimkit.auto import front as fr
from slimkit.auto.plan import base_recipe, build_space, dump, recipe_input
from slimkit.errors import RunError
from slimkit.search.records import FINISHED

log = logging.getLogger(__name__)


def _profile(base: dict[str, Any], baseline_dir: Path, cfg: Any, labelled: bool) -> dict[str, Any]:
    from slimkit.auto.profile import cost_table, epoch_seconds, layer_units, macs_floor, sensitivity_profile
    from slimkit.config.recipe import DataConfig, LatencyConfig
    from slimkit.data import load_data
    from slimkit.pipeline.artifacts import load_saved

    model, example_inputs = load_saved(baseline_dir, "baseline")
    model.eval()
    bundle = load_data(DataConfig.model_validate(base["data"]))
    units = layer_units(model, bundle.num_classes)
    lat = LatencyConfig(batch=cfg.batch, warmup=3, repeats=max(5, cfg.latency_repeats // 2), threads=cfg.threads)
    cost = cost_table(model, example_inputs, units, runtime=cfg.runtime, lat=lat)
    top = [r["unit"] for r in cost["layers"][:cfg.profile_units]]
    sens = sensitivity_profile(model, top, bundle.calibration, example_inputs, all_units=units) if top else {"layers": []}
    # what one recovery epoch costs here: auto sizes the fine-tuning it may search from it and the budget
    epoch_s = epoch_seconds(model, bundle.train) if labelled and cfg.finetune_epochs is None else None
    # how far structured pruning can go here, so the searched MACs range holds only reachable targets
    floor = macs_floor(model, example_inputs) if labelled else None
    return {"cost": cost, "sensitivity": sens, "units": units, "labelled": labelled, "epoch_s": epoch_s,
            "macs_floor": floor}


def auto(model_or_recipe: Any, *, data: str | None = None, out: str | Path | None = None, resume: bool = False,
         tracking: Any = None, **settings: Any) -> dict[str, Any]:
    """Compress ``model_or_recipe`` (a recipe path or mapping with an optional ``auto:`` block, or a model
    name) to meet ``settings`` (the fields of :class:`slimkit.config.auto.AutoConfig`, e.g.
    ``max_latency_ratio=0.5, max_accuracy_drop=0.01``) and return the content of ``auto.json``.
    ``tracking`` as for :func:`slimkit.search.search`: the finished auto run is logged to MLflow as one run
    (auto.json/md/html, the chosen recipe, the deployed model when small) with a nested run per trial."""
    from slimkit.config.search import parse_search
    from slimkit.pipeline.state import RunLock
    from slimkit.search.runner import prepare_baseline, search

    source = str(model_or_recipe) if isinstance(model_or_recipe, str | Path) else None
    base, cfg = base_recipe(recipe_input(model_or_recipe, data), settings, source=source)  # before any compute
    from slimkit.pipeline.tracking import resolve_tracking

    track = resolve_tracking(base.get("tracking"), tracking)
    out = Path(out) if out is not None else Path("runs") / base["name"]
    search_file, profile_file = out / "auto-search.yaml", out / "profile.json"
    t0 = time.monotonic()
    if search_file.exists() and profile_file.exists():
        if not resume:
            raise RunError(f"{out} already holds an auto run.", hint="Pass --resume to continue it, or choose another --out.")
        config = yaml.safe_load(search_file.read_text())
        # the budget and the backend may change on resume; the space and the recipe do not
        config.update(trials=cfg.trials, backend=cfg.backend, address=cfg.address, workers=cfg.workers)
        profile = json.loads(profile_file.read_text())
    else:
        with RunLock(out):
            baseline_dir, baseline = prepare_baseline(base, out)
            profile = _profile(base, baseline_dir, cfg, labelled=baseline.get("accuracy") is not None)
            config = build_space(base, cfg, profile, labelled=profile["labelled"], name=base["name"])
            atomic_write_json(profile_file, profile)
            atomic_write_text(search_file, dump(config))
    config["timeout_s"] = max(1.0, cfg.budget_s - (time.monotonic() - t0))
    plan = parse_search(config, source=str(search_file))
    result = search(plan, out=out, resume=resume or (out / "search.json").exists(), tracking=False)
    summary = finish(out, result, profile, cfg, plan.base)
    if track is not None:
        log_auto(track, out, result)
    return summary


def log_auto(track: Any, out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Log a finished auto run in ``out`` (``result``: its search.json) to MLflow: one run with auto.json/md/html,
    the profile, the chosen recipe and the deployed model (when at most ``track.max_model_mb``) as artifacts,
    and a nested run per trial. Returns the content of ``out/tracking.json``."""
    from slimkit.pipeline.tracking import SEARCH_FILES, log_search

    files = ["auto.json", "auto.md", "auto.html", "chosen.yaml", "closest.yaml", "profile.json", *SEARCH_FILES]
    deployed = out / "deploy" / "model.onnx"
    if deployed.is_file() and deployed.stat().st_size <= track.max_model_mb * 1e6:
        files.append("deploy/model.onnx")
    return log_search(track, out, result, files=files, tags={"slimkit.kind": "auto"})


def int8_note(deploy: dict[str, Any], trial_dir: str) -> str:
    """Why the deployed file is int8, from what was measured: the same model's fp32 ONNX timed beside it in the
    finalists' re-timing (or else at export, a shorter measurement), and where int8 did not run faster, so."""
    retimed = deploy.get("retimed") or {}
    if retimed.get("fp32_artifact_ms") and retimed.get("ms"):
        ratio, how = retimed["fp32_artifact_ms"] / retimed["ms"], f"in the re-timing ({retimed['rounds']} rounds)"
    elif deploy.get("int8_vs_fp32") is not None:
        ratio, how = deploy["int8_vs_fp32"], "at export (3 rounds)"
    else:
        return "int8 is the precision of the chosen trial; its speed against the same model in fp32 was not measured."
    if ratio >= 1.0:
        return (f"int8 is deployed: {how} it ran {ratio:.2f}x the speed of the same compressed model's fp32 ONNX, "
                f"at {deploy['size_bytes']} bytes.")
    return (f"int8 is the precision of the chosen trial (the search measured each trial's deployed file end to end), "
            f"but {how} it ran {ratio:.2f}x the speed of the same compressed model's fp32 ONNX, i.e. not faster in "
            f"that measurement: the fp32 file ({trial_dir}/model.fp32.onnx) may serve as fast; int8 keeps the "
            f"smaller file ({deploy['size_bytes']} bytes).")


def finish(out: Path, result: dict[str, Any], profile: dict[str, Any], cfg: Any,
           base: dict[str, Any]) -> dict[str, Any]:
    """Finalists re-timed (:mod:`slimkit.auto.retime`), then the front, binding constraints, chosen recipe and
    artifact; writes auto.json/md/html. ``base``: the search's resolved base recipe."""
    from slimkit.auto.report import write_auto_report
    from slimkit.auto.retime import best_feasible, retime

    labelled = bool(profile.get("labelled"))
    records = result["trials"]
    retimed = cfg.max_latency_ratio is not None and cfg.retime_max > 0
    if retimed:
        records = retime(out, records, base, margin=cfg.retime_margin, most=cfg.retime_max, rounds=cfg.retime_rounds)
    points = [p for p in (fr.point(r, labelled) for r in records) if p is not None]
    if retimed:  # feasibility changed with the re-timing: the non-dominated points of every finished trial
        front = fr.pareto_front(points)
        front_of = "every finished trial (quality, measured latency, bytes; finalists re-timed)"
    elif result.get("front"):  # a multi-objective study: its non-dominated feasible trials
        on = set(result["front"])
        front = sorted((p for p in points if p["number"] in on), key=lambda p: (p["latency_ms"], -p["quality"]))
        front_of = "the study's non-dominated feasible trials (speedup, quality, bytes)"
    else:  # single objective, or nothing feasible: the non-dominated points among every finished trial
        front = fr.pareto_front(points)
        front_of = "every finished trial (quality, measured latency, bytes)"
    if retimed:
        chosen = best_feasible(records)
    else:
        best = result.get("best")
        chosen = next((r for r in records if best is not None and r["number"] == best["number"]), None)
    feasible = chosen is not None
    target = chosen or fr.closest(records)
    rows = fr.binding(records, target)
    deploy = None
    if target is not None:
        tdir = out / target["dir"]
        recipe = yaml.safe_load((tdir / "recipe.yaml").read_text())
        atomic_write_text(out / ("chosen.yaml" if feasible else "closest.yaml"), yaml.safe_dump(recipe, sort_keys=False))
        report = json.loads((tdir / "report.json").read_text())
        onnx = next((e for e in report.get("exports", []) if e.get("format") == "onnx"), None)
        if feasible and onnx is not None:
            ddir = out / "deploy"
            ddir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tdir / onnx["artifact"], ddir / "model.onnx")
            deploy = {"artifact": "deploy/model.onnx", "precision": onnx.get("precision"),
                      "size_bytes": report["final"]["size_bytes"], "latency_ms": report["final"]["latency_ms"],
                      "retimed": target.get("retimed"),
                      "baseline_latency_ms": report["baseline"]["latency_ms"],
                      "int8_vs_fp32": onnx.get("speedup_vs_fp32"), "note": onnx.get("note"),
                      "verdict": report["verdict"]}
    quality = "accuracy" if labelled else "fidelity (mean output cosine)"
    verdict = fr.explain(rows, feasible) if target is not None else "No trial finished; see search.json."
    if target is not None:
        verdict = (f"{'Chosen' if feasible else 'Closest'}: trial {target['number']} "
                   f"({', '.join(target.get('stages') or []) or 'no structural stage'}). " + verdict)
    if deploy and deploy["precision"] == "int8":
        verdict += " " + int8_note(deploy, target["dir"])
    data = {"name": result["name"], "runtime": cfg.runtime, "quality": quality, "labelled": labelled,
            "settings": cfg.model_dump(mode="json"), "feasible": feasible,
            "chosen": None if target is None else {"number": target["number"], "dir": target["dir"],
                                                   "recipe": "chosen.yaml" if feasible else "closest.yaml",
                                                   "params": target["params"], "metrics": target["metrics"],
                                                   "constraints": target["constraints"],
                                                   "retimed": target.get("retimed")},
            "constraints": rows, "front": front, "front_of": front_of, "points": points,
            "objectives": result.get("objectives") or [result["objective"]], "deploy": deploy,
            "baseline": result.get("baseline"), "profile": "profile.json", "search": "search.json",
            "trials": {"finished": sum(r["state"] in FINISHED for r in records),
                       "stopped_early": sum(r["state"] == "pruned" for r in records),
                       "feasible": sum(bool(r.get("feasible")) for r in records),
                       "feasible_in_search": result["counts"]["feasible"]},
            "retimed": [{"number": r["number"], **r["retimed"], "feasible": r["feasible"]}
                        for r in records if r.get("retimed")],
            "verdict": verdict}
    atomic_write_json(out / "auto.json", data)
    write_auto_report(out, data, profile)
    return data


__all__ = ["auto", "finish", "int8_note", "log_auto"]
