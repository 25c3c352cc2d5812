"""Run a recipe stage by stage: baseline, passes, evaluation after each, checkpoints, resume, report."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from slimkit._io import atomic_write_json, atomic_write_text, disk_full_errors
from slimkit.config.base import PassConfig
from slimkit.config.recipe import Recipe, load_recipe, parse_recipe
from slimkit.config.tracking import TrackingConfig
from slimkit.context import PassContext, resolve_device
from slimkit.errors import DivergenceError, ModelLoadError, RecipeError, RunError
from slimkit.evaluation.latency import environment
from slimkit.passes.quantize.packing import state_nbytes
from slimkit.pipeline.constraints import check_constraints, choose_delivery, verdict
from slimkit.pipeline.state import RunLock, RunState, recipe_hash
from slimkit.progress import track
from slimkit.registry import apply_pass, spec_for

log = logging.getLogger(__name__)


def coerce_recipe(recipe: Any) -> Recipe:
    """A Recipe, a mapping or a path to a YAML file -> a validated Recipe whose ``model.arch``, if any, is a
    registered architecture (checked here, where the models layer is visible, not first in ``run``)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        r, source = parse_recipe(recipe, source="<dict>", base_dir=Path.cwd()), "<dict>"
    elif isinstance(recipe, (str, Path)):
        r, source = load_recipe(recipe), str(recipe)
    else:
        raise RecipeError([("", f"expected a recipe path, mapping or Recipe, got {type(recipe).__name__}")])
    arch = r.model.arch
    if arch is not None:
        from slimkit.errors import did_you_mean
        from slimkit.models.registry import list_archs

        names = list_archs()
        if arch not in names:
            shown = arch if len(arch) <= 40 else arch[:37] + "..."
            raise RecipeError([("model.arch", f"unknown architecture {shown!r}.{did_you_mean(arch[:100], names)} "
                                              f"Known: {', '.join(names)}.")], source=source)
    return r


def stage_dirname(index: int, cfg: PassConfig) -> str:
    return f"{index}-{cfg.kind}"


@dataclass
class _Run:
    recipe: Recipe
    run_dir: Path
    bundle: Any = None
    build: Any = None
    reference: nn.Module | None = None  # the baseline model: fidelity is measured against it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # recipe.device, resolved
    stages_meta: list[dict[str, Any]] = field(default_factory=list)


def _reseed(bundle: Any, seed: int) -> None:
    """Make the shuffling of every loader depend only on ``seed`` (so a resumed stage repeats exactly)."""
    torch.manual_seed(seed)
    for name in ("train", "val", "test", "calibration"):
        loader = getattr(bundle, name, None)
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)
        sampler = getattr(loader, "sampler", None)
        sgen = getattr(sampler, "generator", None)
        if isinstance(sgen, torch.Generator):
            sgen.manual_seed(seed)


def _evaluate(run: _Run, model: nn.Module, artifact: Path | None, *, latency: bool = True) -> dict[str, Any]:
    """The METRICS of ``model``: accuracy/F1 on labelled data; fidelity to the baseline (``run.reference``;
    the baseline itself while it is measured) on unlabelled data, or with ``evaluate.fidelity``."""
    from slimkit.evaluation import evaluate_model

    r = run.recipe
    loader = run.bundle.test if r.evaluate.split == "test" else (run.bundle.val or run.bundle.test)
    labelled = getattr(run.bundle, "labelled", True)
    reference = (run.reference or model) if (not labelled or r.evaluate.fidelity) else None
    return evaluate_model(
        model, loader if labelled else None, example_inputs=run.bundle.example_inputs,
        latency=r.evaluate.latency if latency else None,
        artifact=artifact, run_dir=run.run_dir, reference=reference, fidelity_loader=loader,
    )


def _save_checkpoint(model: nn.Module, directory: Path, spec: dict[str, Any]) -> Path:
    """Save safetensors + manifest into ``directory`` atomically (written beside it, then renamed)."""
    from slimkit.exporters import save_model

    tmp = directory.parent / f".tmp-{directory.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_model(model, tmp, spec=spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory / "model.safetensors"


def _restore(run: _Run, directory: Path, passes: list[PassConfig]) -> nn.Module:
    """Rebuild the architecture, redo the structural changes of ``passes`` and load the checkpoint."""
    from slimkit.exporters import load_model
    from slimkit.exporters.safetensors_io import load_manifest

    manifest = load_manifest(directory)

    def build(_spec: dict[str, Any]) -> nn.Module:
        model = run.build()
        for cfg in passes:
            rebuild = spec_for(cfg).rebuild
            if rebuild is not None:
                model = rebuild(model, cfg, manifest) or model
        return model

    return load_model(directory, build)


def _model_spec(run: _Run) -> dict[str, Any]:
    return {"model": run.recipe.model.model_dump(mode="json"), "input_shape": list(run.bundle.input_shape),
            "num_classes": run.bundle.num_classes}


def _baseline(run: _Run, state: RunState) -> nn.Module:
    from slimkit.config.finetune import FinetuneConfig

    r = run.recipe
    bdir = run.run_dir / "baseline"
    if state.data.get("baseline") and (bdir / "manifest.json").exists():
        try:
            return _restore(run, bdir, [])
        except ModelLoadError as exc:
            log.warning("baseline checkpoint unusable (%s); rebuilding it", exc)
    _reseed(run.bundle, r.seed)
    model = run.build()
    if r.model.weights is None and r.model.train is not None:
        from slimkit.passes.finetune.loop import train_model

        t = r.model.train
        cfg = FinetuneConfig(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay, keep_sparsity=False,
                             patience=None, keep_best=True)
        train_model(model, run.bundle.train, cfg, val_loader=run.bundle.val, seed=r.seed,
                    description="train baseline")
    elif r.model.weights is None and r.model.arch is not None:
        log.warning("model has no weights and no train section: compressing a randomly initialised network")
    artifact = _save_checkpoint(model, bdir, _model_spec(run))
    metrics = _evaluate(run, model, artifact)
    state.data["baseline"] = metrics
    state.save()
    return model


def _pass_context(run: _Run, teacher: nn.Module, index: int) -> PassContext:
    b = run.bundle
    return PassContext(example_inputs=b.example_inputs, calibration=b.calibration, train_loader=b.train,
                       val_loader=b.val, teacher=teacher, num_classes=b.num_classes,
                       seed=run.recipe.seed + index, workdir=run.run_dir / "stages")


def _paired_latency(run: _Run, baseline: nn.Module, final: nn.Module) -> tuple[Any, Any]:
    """Baseline and final latency measured alternately in this process (evaluation.latency.paired_latency)."""
    from slimkit.evaluation.latency import paired_latency, torch_latency

    cfg = run.recipe.evaluate.latency
    if cfg is None:
        return None, None
    x = run.bundle.example_inputs
    return paired_latency(lambda: torch_latency(baseline, x, cfg), lambda: torch_latency(final, x, cfg))


def _export(run: _Run, model: nn.Module) -> list[dict[str, Any]]:
    """The recipe's ONNX export, through the one export path (``slimkit.exporters.export_model``)."""
    from slimkit.exporters import export_model

    out: list[dict[str, Any]] = []
    ex = run.recipe.export
    if "safetensors" in ex.formats:  # the final checkpoint is the safetensors export: list it with the others
        from slimkit.evaluation.cost import file_size

        out.append({"format": "safetensors", "artifact": "final/model.safetensors",
                    "size_bytes": file_size(run.run_dir / "final" / "model.safetensors"),
                    "manifest": "final/manifest.json", "parity": None})  # its reload is what resume/eval test
    if "onnx" not in ex.formats:
        return out
    res = export_model(model, run.run_dir / "model.onnx", example_inputs=run.bundle.example_inputs,
                       precision=ex.onnx.precision, opset=ex.onnx.opset, atol=ex.onnx.parity_atol,
                       quantize="auto" if ex.onnx.precision == "int8" else None,
                       calibration=run.bundle.calibration, latency=run.recipe.evaluate.latency)
    return [*out, {"format": "onnx", **relative_artifacts(res, run.run_dir)}]


def relative_artifacts(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    """An export entry with every ``artifact`` path (nested ones too) relative to ``base``, as a string."""
    return {k: (str(Path(v).relative_to(base)) if k == "artifact" and v is not None else
                relative_artifacts(v, base) if isinstance(v, dict) else v) for k, v in entry.items()}


def run_recipe(recipe: Any, out: str | Path | None = None, *, resume: bool = False,
               replace: bool = False, tracking: TrackingConfig | Literal[False] | None = None) -> dict[str, Any]:
    """Execute ``recipe`` into ``out`` (default ``runs/<name>``) and return the report as a dict.

    ``replace=True`` deletes a previous run found in ``out`` (after taking its lock) instead of refusing.
    ``tracking``: None follows the recipe's ``tracking:`` block, False turns tracking off, a
    :class:`~slimkit.config.tracking.TrackingConfig` replaces the block; a tracked run is logged to MLflow
    after its report is written (:mod:`slimkit.pipeline.tracking`).
    A stage whose training diverges stops the run there; ``final`` is the stage ``recipe.deliver`` picks
    (:func:`slimkit.pipeline.constraints.choose_delivery`) and the report's ``delivered`` says which and why.
    """
    r = coerce_recipe(recipe)
    from slimkit.pipeline.fit import check_fit

    check_fit(r)  # model, weights and data fit together: fail before any compute
    from slimkit.pipeline.tracking import log_run, resolve_tracking

    track = resolve_tracking(r.tracking, tracking)  # a missing MLflow is found before any compute
    run_dir = Path(out) if out is not None else Path("runs") / r.name
    need: dict[str, int] = {}
    with RunLock(run_dir), disk_full_errors(run_dir, need):
        if replace and not resume:
            _clear_run_dir(run_dir)
        report = _run_locked(r, run_dir, resume=resume, need=need)
        if track is not None:
            log_run(track, run_dir, report)
        return report


def _clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's files from ``run_dir`` (only when it holds one), keeping the held lock."""
    if not (run_dir / "state.json").exists():
        return
    log.warning("removing the previous run in %s", run_dir)
    for child in run_dir.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _run_locked(r: Recipe, run_dir: Path, *, resume: bool, need: dict[str, int]) -> dict[str, Any]:
    from slimkit.data import load_data
    from slimkit.models import build_model

    resolved = r.resolved()
    state = RunState(run_dir)
    state.start(recipe_hash(resolved), resume=resume)
    for name in ("report.json", "report.md", "report.html", "tracking.json"):  # only ever of a finished run
        (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", _yaml(resolved))
    torch.manual_seed(r.seed)
    run = _Run(r, run_dir, device=resolve_device(r.device))
    with track("load data", total=None):
        run.bundle = load_data(r.data)
    run.build = lambda: build_model(r.model, input_shape=run.bundle.input_shape, num_classes=run.bundle.num_classes,
                                    seed=r.seed).to(run.device)
    baseline_model = _baseline(run, state)
    need["bytes"] = state_nbytes(baseline_model.state_dict())
    baseline_metrics = dict(state.data["baseline"])
    teacher = copy.deepcopy(baseline_model).eval()
    run.reference = teacher

    # resume: the longest prefix of finished stages whose checkpoint can be restored
    model: nn.Module | None = baseline_model
    start = 0
    for i in range(len(r.stages)):
        if state.stage(i) is None:
            break
        start = i + 1
    while start > 0:
        d = run_dir / "stages" / stage_dirname(start - 1, r.stages[start - 1])
        try:
            model = _restore(run, d, r.stages[:start])
            log.info("resumed after stage %d (%s)", start - 1, d)
            break
        except (ModelLoadError, RuntimeError, KeyError) as exc:
            log.warning("cannot restore %s (%s); recomputing it", d, exc)
            start -= 1
    if start == 0:
        model = copy.deepcopy(baseline_model)
    state.forget_from(start)

    stopped: dict[str, Any] | None = None
    early = _stop_early(r, baseline_metrics, state.stage(start - 1), start) if start > 0 else None
    for i, cfg in enumerate(r.stages):
        if i < start or early:
            continue
        _reseed(run.bundle, r.seed + 1000 * (i + 1))
        ctx = _pass_context(run, teacher, i)
        t0 = time.perf_counter()
        try:
            with track(f"stage {i + 1}/{len(r.stages)} {cfg.kind}:{cfg.method}", total=None):
                model = apply_pass(model, cfg, ctx)
        except DivergenceError as exc:
            stopped = {"index": i, "pass": f"{cfg.kind}:{cfg.method}", "reason": exc.message,
                       "seconds": round(time.perf_counter() - t0, 3)}
            log.warning("stage %d (%s:%s) stopped: %s", i, cfg.kind, cfg.method, exc)
            model = None  # changed in place by the stopped stage: reloaded from a checkpoint below
            break
        seconds = time.perf_counter() - t0
        sdir = run_dir / "stages" / stage_dirname(i, cfg)
        artifact = _save_checkpoint(model, sdir, _model_spec(run))
        metrics = _evaluate(run, model, artifact)
        record = {"index": i, "pass": f"{cfg.kind}:{cfg.method}", "config": cfg.model_dump(mode="json"),
                  "metrics": metrics, "seconds": round(seconds, 3)}
        notes = []
        for rec in ctx.records:  # what the pass recorded (typed records), stored whole
            if rec.key in record or rec.key == "notes":
                raise RunError(f"{type(rec).__name__}.key {rec.key!r} clashes with the stage record's own "
                               f"'{rec.key}' entry.", hint="Give the record another key.")
            record[rec.key] = rec.to_json()
            notes += rec.notes(i)
        if notes:
            record["notes"] = notes
        if ctx.extras.get("layers") and "layers" not in record:  # per-layer rows: what was removed, output error
            record["layers"] = ctx.extras["layers"]
        atomic_write_json(sdir / "stage.json", record)
        state.finish_stage(i, record)
        early = _stop_early(r, baseline_metrics, record, i + 1)

    stages = [st for st in (state.stage(i) for i in range(len(r.stages))) if st is not None]
    if early:
        return _stopped_report(run, baseline_metrics, stages, early, resolved)
    delivered, model = _deliver(run, stages, baseline_model, baseline_metrics, model, stopped)
    # final artifacts
    final_dir = run_dir / "final"
    applied = 0 if delivered["stage"] is None else delivered["stage"] + 1  # stages whose changes it holds
    artifact = _save_checkpoint(model, final_dir, {**_model_spec(run), "stages_applied": applied})
    final = _evaluate(run, model, artifact, latency=False)
    lat_cfg = r.evaluate.latency
    if lat_cfg is not None and lat_cfg.runtime == "onnxruntime":
        exports = _export(run, model)
        from slimkit.pipeline.deployed import deployed_metrics

        baseline_metrics, final = deployed_metrics(run_dir, r, run.bundle, baseline_model, exports,
                                                   baseline_metrics, final)
    else:
        b_lat, f_lat = _paired_latency(run, baseline_model, model)
        if b_lat is not None:
            baseline_metrics["latency_ms"] = b_lat
            baseline_metrics["throughput"] = b_lat["batch"] * 1000.0 / b_lat["median"]
            final["latency_ms"] = f_lat
            final["throughput"] = f_lat["batch"] * 1000.0 / f_lat["median"]
        exports = _export(run, model)
    rows = check_constraints(r.constraints, baseline_metrics, final)
    report = {
        "name": r.name,
        "recipe": resolved,
        "baseline": baseline_metrics,
        "stages": stages,
        "final": final,
        "delivered": delivered,
        **({"stopped": stopped} if stopped else {}),
        "exports": exports,
        "constraints": rows,
        "verdict": verdict(baseline_metrics, final, rows, notes=_delivery_notes(delivered, stopped, stages)
                           + _runtime_notes(model) + _stage_notes(stages) + _export_notes(exports)),
        "environment": environment(run.device),
    }
    from slimkit.pipeline.report import write_report

    write_report(run_dir, report)
    return report


def _deliver(run: _Run, stages: list[dict[str, Any]], baseline_model: nn.Module, baseline_metrics: dict[str, Any],
             model: nn.Module | None, stopped: dict[str, Any] | None) -> tuple[dict[str, Any], nn.Module]:
    """Pick the delivered model (``recipe.deliver``) among the finished stages and load it when it is not
    the one in memory. Returns the report's ``delivered`` entry and the model."""
    r = run.recipe
    if not stages:
        why = "the baseline: no stage finished" if stopped is not None else "the baseline (the recipe has no stages)"
        return {"stage": None, "pass": "baseline", "reason": why}, model or copy.deepcopy(baseline_model)
    k, why = choose_delivery(r.constraints, baseline_metrics, stages, r.deliver)
    if model is None or k != stages[-1]["index"]:
        model = _restore(run, run.run_dir / "stages" / stage_dirname(k, r.stages[k]), r.stages[:k + 1])
    if stopped is not None and k == stages[-1]["index"]:
        why += f", the last stage that finished before stage {stopped['index']} was stopped"
    return {"stage": k, "pass": stages[[st["index"] for st in stages].index(k)]["pass"], "reason": why}, model


def _stop_early(r: Recipe, baseline: dict[str, Any], record: dict[str, Any] | None, done: int) -> str | None:
    """evaluate.stop_early: after ``done`` stages, the reason the run cannot meet its quality constraints
    any more (no later stage trains), or None."""
    from slimkit.pipeline.constraints import RECOVERY_KINDS, hopeless

    if not r.evaluate.stop_early or record is None or done >= len(r.stages):
        return None
    if any(c.kind in RECOVERY_KINDS for c in r.stages[done:]):
        return None
    why = hopeless(r.constraints, baseline, record["metrics"])
    return None if why is None else f"after stage {done - 1} ({record['pass']}): {why}"


def _stopped_report(run: _Run, baseline: dict[str, Any], stages: list[dict[str, Any]], why: str,
                    resolved: dict[str, Any]) -> dict[str, Any]:
    """The report of a run stopped early: the last stage's metrics are final; nothing exported, no latency."""
    from slimkit.pipeline.report import write_report

    final = dict(stages[-1]["metrics"])
    rows = check_constraints(run.recipe.constraints, baseline, final)
    report = {"name": run.recipe.name, "recipe": resolved, "baseline": baseline, "stages": stages, "final": final,
              "delivered": {"stage": stages[-1]["index"], "reason": f"stopped early {why}"},
              "exports": [], "constraints": rows, "stopped_early": why,
              "verdict": verdict(baseline, final, rows, notes=[f"Stopped early {why}; later stages cannot win it "
                                                               "back, so they, the export and the latency "
                                                               "measurement were skipped."]),
              "environment": environment(run.device)}
    write_report(run.run_dir, report)
    return report


def _delivery_notes(delivered: dict[str, Any], stopped: dict[str, Any] | None,
                    stages: list[dict[str, Any]]) -> list[str]:
    notes = []
    if stopped is not None:
        notes.append(f"Stage {stopped['index']} ({stopped['pass']}) was stopped: {stopped['reason']} "
                     "Later stages did not run.")
    if stopped is not None or delivered["stage"] != (stages[-1]["index"] if stages else None) \
            or "deliver: last" in delivered["reason"]:
        notes.append(f"Delivered: {delivered['reason']}.")
    return notes


def _runtime_notes(model: nn.Module) -> list[str]:
    """Why the final model's PyTorch latency is not its deployed latency (from the forms its passes declared)."""
    from slimkit.exporters.quantized import model_forms

    return list(dict.fromkeys(f.runtime_note for f in model_forms(model) if f.runtime_note))


def _stage_notes(stages: list[dict[str, Any] | None]) -> list[str]:
    """The notes the passes' records gave for their stage (e.g. the mixed-precision choice)."""
    return [note for st in stages for note in (st or {}).get("notes", [])]


def _export_notes(exports: list[dict[str, Any]]) -> list[str]:
    """The exporters' plain-words notes (e.g. whether int8 ONNX is faster than fp32 ONNX here, and why)."""
    return [f"Export {e.get('format', '')} {e.get('precision', '')}: {e['note']}".replace("  ", " ")
            for e in exports if e.get("note")]


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def restore_saved(recipe: Recipe, run_dir: Path, directory: Path, upto: int) -> tuple[nn.Module, Any]:
    """Rebuild the model saved in ``directory`` by a run of ``recipe`` after its first ``upto`` stages (no
    data-dependent compute: structural passes are redone from the manifest). Returns (model, data bundle)."""
    from slimkit.data import load_data
    from slimkit.models import build_model

    run = _Run(recipe, run_dir, device=resolve_device(recipe.device))
    run.bundle = load_data(recipe.data)
    run.build = lambda: build_model(recipe.model, input_shape=run.bundle.input_shape,
                                    num_classes=run.bundle.num_classes, seed=recipe.seed).to(run.device)
    return _restore(run, directory, list(recipe.stages[:upto])), run.bundle


__all__ = ["RunError", "coerce_recipe", "restore_saved", "run_recipe"]
