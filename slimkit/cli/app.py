"""The ``slimkit`` command line. User errors print one paragraph and exit 2; --verbose shows tracebacks."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from slimkit.cli.progress import TRACK_OPTION, cli_reporter, console, err_console, print_report
from slimkit.cli.style import SlimkitGroup
from slimkit.config.tracking import parse_track
from slimkit.errors import SlimkitError

app = typer.Typer(cls=SlimkitGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="slimkit: make trained PyTorch models smaller and faster, with measured numbers.")
_state: dict[str, Any] = {"verbose": False}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show logs and full tracebacks.")] = False) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # torch's exporter logs optional-dependency notes (e.g. torchvision) at warning level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up notes (--track)
        logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, or a shipped recipe's name (e.g. quantize-dynamic)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default runs/<name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue after the last finished stage")] = False,
    track: Annotated[str | None, TRACK_OPTION] = None,
    device: Annotated[str | None, DEVICE_OPTION] = None,
) -> None:
    """Run a recipe (a YAML file, or the name of a shipped recipe): baseline, stages, evaluation, report."""
    from slimkit.pipeline.runner import coerce_recipe, run_recipe
    from slimkit.recipes import resolve_recipe

    recipe = resolve_recipe(recipe)  # `slimkit run quantize-dynamic`: a recipe shipped inside the package

    r = with_device(coerce_recipe(recipe), device)
    tracking = parse_track(track) if track else None
    run_dir = out or Path("runs") / r.name
    _state["resume"] = f"slimkit run {recipe} --out {run_dir} --resume"
    with cli_reporter():
        report = run_recipe(r, out=run_dir, resume=resume, tracking=tracking)
    print_report(report, run_dir)


DEVICE_OPTION = typer.Option("--device", metavar="auto|cpu|cuda",
                             help="replaces the recipe's device: (auto: cuda when available, else cpu)")


def with_device(recipe: Any, device: str | None) -> Any:
    """The recipe with ``--device`` applied (checked like the recipe's own ``device:`` field)."""
    import re

    from slimkit.config.recipe import DEVICE_PATTERN
    from slimkit.errors import RecipeError

    if device is None:
        return recipe
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise RecipeError([("--device", f"expected auto, cpu, cuda or cuda:N, got {device[:40]!r}")])
    return recipe.model_copy(update={"device": device})


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/demo"),
    resume: Annotated[bool, typer.Option("--resume")] = False,
) -> None:
    """Run the embedded demo: train a CNN on digits, prune it in steps with fine-tuning, report."""
    from slimkit.pipeline.runner import run_recipe
    from slimkit.recipes import demo_recipe_path

    _state["resume"] = f"slimkit demo --out {out} --resume"
    with cli_reporter():  # a previous demo run in `out` is replaced, under the run directory's lock
        report = run_recipe(demo_recipe_path(), out=out, resume=resume, replace=not resume)
    print_report(report, out)


@app.command()
def validate(recipe: Annotated[Path, typer.Argument(help="YAML recipe, or a shipped recipe's name")],
             device: Annotated[str | None, DEVICE_OPTION] = None) -> None:
    """Check a recipe, and that its model, weights, data and device fit, without training or evaluating; list
    every problem."""
    from slimkit.pipeline.fit import check_fit
    from slimkit.pipeline.runner import coerce_recipe
    from slimkit.recipes import resolve_recipe

    r = with_device(coerce_recipe(resolve_recipe(recipe)), device)
    check_fit(r, source=str(recipe))
    console.print(f"[green]ok[/]: {recipe} ({len(r.stages)} stage(s): "
                  + ", ".join(f"{s.kind}:{s.method}" for s in r.stages) + ")")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (evaluates its final model)")],
    stage: Annotated[str, typer.Option(help="'final', 'baseline' or a stage index")] = "final",
) -> None:
    """Re-evaluate a saved model of a run from its artifact on disk."""
    from slimkit.pipeline.artifacts import evaluate_saved

    with cli_reporter():
        metrics = evaluate_saved(run_dir, stage)
    table = Table(title=f"{run_dir} (stage {stage})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in metrics:
        table.add_row(k, metric_text(k, metrics))
    console.print(table)


def metric_text(key: str, m: dict[str, Any]) -> str:
    """One metric of a METRICS dict for a person: rounded, units named, 'not measured' for None."""
    from slimkit.pipeline.report.render import fmt

    v = m.get(key)
    if v is None:
        return "not measured"
    if key == "latency_ms":
        return (f"{v['median']:.3g} ms median, {v['p90']:.3g} ms p90 (batch {v.get('batch', 1)}"
                + (f", {v['runtime']}" if v.get("runtime") else "") + ")")
    if key == "fidelity":
        parts = [f"cosine {v['cosine']:.4f}" if v.get("cosine") is not None else None,
                 f"min cosine {v['cosine_min']:.4f}" if v.get("cosine_min") is not None else None,
                 f"top-1 agreement {100 * v['top1_agreement']:.2f}%" if v.get("top1_agreement") is not None else None]
        return ", ".join(p for p in parts if p) or "not measured"
    if key == "size_bytes":
        return f"{fmt(key, m)} ({v:,} bytes)"
    if key == "throughput":
        return f"{v:,.0f} samples/s"
    return fmt(key, m)


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="a built-in arch name, or a run directory")],
    input_shape: Annotated[str, typer.Option("--input", help="C,H,W for a built-in arch")] = "1,8,8",
    num_classes: Annotated[int, typer.Option("--classes", min=1, max=1_000_000)] = 10,
) -> None:
    """Layers, parameters and MACs of a model."""
    import torch

    from slimkit.evaluation.cost import count_macs, count_params
    from slimkit.pipeline.artifacts import load_saved

    if Path(model).is_dir():
        net, example = load_saved(Path(model), "final")
    else:
        from slimkit.config.recipe import ModelConfig
        from slimkit.models import build_model

        try:
            shape = tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise SlimkitError(f"--input must be C,H,W positive integers, got {input_shape!r}")
        net = build_model(ModelConfig(arch=model), input_shape=shape, num_classes=num_classes)
        example = (torch.randn(1, *shape),)
    table = Table(title=f"{model}")
    for col in ("layer", "type", "shape", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for name, mod in net.named_modules():
        if len(list(mod.children())) == 0:
            n = sum(p.numel() for p in mod.parameters(recurse=False))
            w = getattr(mod, "weight", None)
            shape_s = "x".join(map(str, w.shape)) if hasattr(w, "shape") else ""
            table.add_row(name or "(root)", type(mod).__name__, shape_s, f"{n:,}")
    console.print(table)
    console.print(f"params: {count_params(net):,}   MACs (batch 1): {count_macs(net, example):,}")


from slimkit.cli.search import register as _register_search  # noqa: E402  (slimkit search; slimkit/cli/search.py)

_register_search(app)


def _interrupted() -> None:
    resume = _state.get("resume")
    msg = "[bold yellow]interrupted[/]"
    if resume:
        msg += f": finished stages are saved. Continue with: {escape(resume)}"
    err_console.print(msg, highlight=False, soft_wrap=True)  # one line: the command can be copied
    sys.exit(130)


def _os_error(exc: OSError) -> str | None:
    """One paragraph for a file-system error the user can fix (full disk, permissions, a file where a
    directory is needed), or None for anything else."""
    import errno

    fixable = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a path component is not a directory",
               errno.EISDIR: "it is a directory", errno.EEXIST: "it already exists", errno.ENOENT: "it does not exist"}
    if exc.errno not in fixable:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return f"cannot use {where}: {fixable[exc.errno]} ({exc.strerror})."


def main() -> None:
    """Console entry point: typer app with typed errors turned into exit codes. Never exits 0 after a
    failure or an interruption (Ctrl-C: 130 and how to resume)."""
    # errors print with soft_wrap: a long path is never broken across lines (it stays copyable)
    try:
        rv = app(standalone_mode=False)
    except SlimkitError as exc:
        if _state["verbose"]:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that catches everything
        # click's usage errors (typer vendors click, so match by shape, not by class)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        if _state["verbose"]:
            traceback.print_exc()
        fs = _os_error(exc) if isinstance(exc, OSError) else None
        if fs is not None:
            err_console.print(f"[bold red]error:[/] {escape(fs)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, (RecursionError, MemoryError)):
            err_console.print(f"[bold red]error:[/] the input is too large or too deeply nested "
                              f"({type(exc).__name__}).", highlight=False)
            sys.exit(2)
        err_console.print(f"[bold red]internal error[/] ({type(exc).__name__}): {escape(str(exc))}\n"
                          "This is a bug in slimkit; run with --verbose for the traceback and report it.",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    # under standalone_mode=False typer *returns* exit codes: 130 for a KeyboardInterrupt inside a
    # command, N for typer.Exit(N); never let them turn into 0
    if rv == 130:
        _interrupted()
    if isinstance(rv, int) and rv != 0:
        sys.exit(rv)


from slimkit.cli.quantize import register as _register_quantize  # noqa: E402  (quantize, export commands)

_register_quantize(app)

from slimkit.cli.sensitivity import register as _register_sensitivity  # noqa: E402  (slimkit sensitivity)

_register_sensitivity(app)

from slimkit.cli.compare import register as _register_compare  # noqa: E402  (slimkit compare)
from slimkit.cli.report import register as _register_report  # noqa: E402  (slimkit report)

_register_compare(app)
_register_report(app)

from slimkit.cli.auto import register as _register_auto  # noqa: E402  (slimkit auto; slimkit/cli/auto.py)

_register_auto(app)

if __name__ == "__main__":
    main()
