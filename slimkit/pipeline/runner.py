"""Run a recipe stage by stage: baseline, passes, evaluation after each, checkpoints, resume, report."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import atomic_write_json, atomic_write_text
from slimkit.config.base import PassConfig
from slimkit.config.recipe import Recipe, load_recipe, parse_recipe
from slimkit.context import PassContext
from slimkit.errors import ModelLoadError, RecipeError, RunError
from slimkit.pipeline.constraints import check_constraints, verdict
from slimkit.pipeline.state import RunLock, RunState, recipe_hash
from slimkit.progress import track
from slimkit.registry import spec_for

log = logging.getLogger(__name__)


def coerce_recipe(recipe: Any) -> Recipe:
    """A Recipe, a mapping or a path to a YAML file -> a validated Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe, source="<dict>", base_dir=Path.cwd())
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    raise RecipeError([("", f"expected a recipe path, mapping or Recipe, got {type(recipe).__name__}")])


def stage_dirname(index: int, cfg: PassConfig) -> str:
    return f"{index}-{cfg.kind}"


@dataclass
class _Run:
    recipe: Recipe
    run_dir: Path
    bundle: Any = None
    build: Any = None
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
    from slimkit.evaluation import evaluate_model

    r = run.recipe
    loader = run.bundle.test if r.evaluate.split == "test" else (run.bundle.val or run.bundle.test)
    return evaluate_model(
        model, loader, example_inputs=run.bundle.example_inputs,
        latency=r.evaluate.latency if latency else None,
        artifact=artifact, run_dir=run.run_dir,
    )


def _save_checkpoint(model: nn.Module, directory: Path, spec: dict[str, Any]) -> Path:
    """Save safetensors + manifest into ``directory`` atomically (written beside it, then renamed)."""
    from slimkit.exporters import save_model

    tmp = directory.parent / f".tmp-{directory.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, spec=spec)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory / "model.safetensors"


def _restore(run: _Run, directory: Path, passes: list[PassConfig]) -> nn.Module:
    """Rebuild the architecture, redo the structural changes of ``passes`` and load the checkpoint."""
    import json

    from slimkit.exporters import load_model

    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise ModelLoadError(f"checkpoint {directory} has no manifest.json")
    manifest = json.loads(manifest_path.read_text())

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
    """Measure baseline and final latency alternately in this process (A B A B), median of the rounds."""
    from slimkit.evaluation.latency import torch_latency

    cfg = run.recipe.evaluate.latency
    if cfg is None:
        return None, None
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    for _ in range(3):
        a.append(torch_latency(baseline, run.bundle.example_inputs, cfg))
        b.append(torch_latency(final, run.bundle.example_inputs, cfg))

    def mid(rows: list[dict[str, Any]]) -> dict[str, Any]:
        rows = sorted(rows, key=lambda r: r["median"])
        return rows[len(rows) // 2]

    return mid(a), mid(b)


def _export(run: _Run, model: nn.Module) -> list[dict[str, Any]]:
    from slimkit.exporters import export_model

    out = []
    ex = run.recipe.export
    # --- quantization (issue 4): int8 ONNX, and float ONNX of a quantized model, go through
    # slimkit.passes.quantize.deploy (route by what the model holds; int8 vs fp32 ONNX latency in this process).
    import sys

    quantized = "slimkit.passes.quantize" in sys.modules  # imported only when a quantize pass ran
    if quantized:
        from slimkit.passes.quantize.deploy import quant_kind

        quantized = quant_kind(model) is not None
    if "onnx" in ex.formats and (ex.onnx.precision == "int8" or quantized):
        from slimkit.passes.quantize.deploy import deploy_onnx

        out.append(deploy_onnx(model, run.run_dir / "model.onnx", example_inputs=run.bundle.example_inputs,
                               precision=ex.onnx.precision, opset=ex.onnx.opset, atol=ex.onnx.parity_atol,
                               calibration=run.bundle.calibration, latency=run.recipe.evaluate.latency))
        return out
    # --- end quantization
    if "onnx" in ex.formats:
        res = export_model(model, run.run_dir / "model.onnx", example_inputs=run.bundle.example_inputs,
                           precision=ex.onnx.precision, opset=ex.onnx.opset, atol=ex.onnx.parity_atol)
        res = {k: (str(Path(v).relative_to(run.run_dir)) if k == "artifact" else v) for k, v in res.items()}
        out.append({"format": "onnx", **res})
    return out


def run_recipe(recipe: Any, out: str | Path | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Execute ``recipe`` into ``out`` (default ``runs/<name>``) and return the report as a dict."""
    from slimkit.data import load_data
    from slimkit.models import build_model

    r = coerce_recipe(recipe)
    run_dir = Path(out) if out is not None else Path("runs") / r.name
    resolved = r.resolved()
    with RunLock(run_dir):
        state = RunState(run_dir)
        state.start(recipe_hash(resolved), resume=resume)
        atomic_write_text(run_dir / "recipe.yaml", _yaml(resolved))
        torch.manual_seed(r.seed)
        run = _Run(r, run_dir)
        with track("load data", total=None):
            run.bundle = load_data(r.data)
        run.build = lambda: build_model(r.model, input_shape=run.bundle.input_shape, num_classes=run.bundle.num_classes,
                                        seed=r.seed)
        baseline_model = _baseline(run, state)
        baseline_metrics = dict(state.data["baseline"])
        teacher = copy.deepcopy(baseline_model).eval()

        # resume: the longest prefix of finished stages whose checkpoint can be restored
        model = baseline_model
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

        for i, cfg in enumerate(r.stages):
            if i < start:
                continue
            _reseed(run.bundle, r.seed + 1000 * (i + 1))
            ctx = _pass_context(run, teacher, i)
            t0 = time.perf_counter()
            from slimkit.api import apply_pass

            with track(f"stage {i + 1}/{len(r.stages)} {cfg.kind}:{cfg.method}", total=None):
                model = apply_pass(model, cfg, ctx)
            seconds = time.perf_counter() - t0
            sdir = run_dir / "stages" / stage_dirname(i, cfg)
            artifact = _save_checkpoint(model, sdir, _model_spec(run))
            metrics = _evaluate(run, model, artifact)
            record = {"index": i, "pass": f"{cfg.kind}:{cfg.method}", "config": cfg.model_dump(mode="json"),
                      "metrics": metrics, "seconds": round(seconds, 3)}
            if ctx.extras.get("sensitivity"):  # per-layer sensitivity and mixed precision (PTQConfig.mixed)
                record["sensitivity"] = ctx.extras["sensitivity"]
            if ctx.extras.get("layers"):  # per-layer rows: what was removed, calibration output error
                record["layers"] = ctx.extras["layers"]
            atomic_write_json(sdir / "stage.json", record)
            state.finish_stage(i, record)

        stages = [state.stage(i) for i in range(len(r.stages))]
        # final artifacts
        final_dir = run_dir / "final"
        artifact = _save_checkpoint(model, final_dir, _model_spec(run))
        final = _evaluate(run, model, artifact, latency=False)
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
            "exports": exports,
            "constraints": rows,
            "verdict": verdict(baseline_metrics, final, rows, notes=_quant_notes(model) + _sensitivity_notes(stages)
                               + _export_notes(exports)),
            "environment": _environment(),
        }
        from slimkit.pipeline.report import write_report

        write_report(run_dir, report)
        return report


def _quant_notes(model: nn.Module) -> list[str]:
    """Why a quantized model's PyTorch latency is not its deployed latency."""
    import sys

    if "slimkit.passes.quantize" not in sys.modules:
        return []
    from slimkit.passes.quantize.deploy import quant_kind

    kind = quant_kind(model)
    if kind in ("fakequant", "fakequant-nonlinear"):
        return ["The PyTorch latency above is of the fake-quantized model, which simulates low precision with "
                "extra quantize-dequantize steps in float, so it is slower than the float model by design; "
                "the deployable speed is the exported artifact's."]
    if kind == "packed":
        return ["The PyTorch latency above unpacks low-bit weights on every call; the saving is in bytes, "
                "not time, unless a runtime with low-bit kernels is used."]
    return []


def _sensitivity_notes(stages: list[dict[str, Any]]) -> list[str]:
    """One sentence per stage that chose its precision by measured sensitivity (PTQ ``mixed``)."""
    out = []
    for st in stages:
        r = (st or {}).get("sensitivity")
        if not isinstance(r, dict):
            continue
        kept = ", ".join(r["keep"]) or "no layer"
        out.append(f"Mixed precision (stage {st['index']}): {r['metric']} {r['score']:.4f} "
                   f"{'meets' if r['met'] else 'does NOT meet'} the floor {r['floor']:.4g} keeping {kept} "
                   f"at {r['keep_as']} ({r['all_compressed']:.4f} with every layer at {r['bits']} bits)"
                   + ("." if r["met"] else f": {r['reason']}."))
    return out


def _export_notes(exports: list[dict[str, Any]]) -> list[str]:
    """The exporters' plain-words notes (e.g. whether int8 ONNX is faster than fp32 ONNX here, and why)."""
    return [f"Export {e.get('format', '')} {e.get('precision', '')}: {e['note']}".replace("  ", " ")
            for e in exports if e.get("note")]


def _environment() -> dict[str, Any]:
    import platform

    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


__all__ = ["RunError", "coerce_recipe", "run_recipe"]
