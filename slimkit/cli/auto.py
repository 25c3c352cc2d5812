"""``slimkit auto MODEL_OR_RECIPE --data ... --max-latency-ratio 0.5 --max-accuracy-drop 1 ...``: automatic
compression on the command line (the same as ``slimkit.auto(...)`` and a recipe's ``auto:`` block).
Registered on the typer app by :func:`register` (called from slimkit/cli/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from slimkit.cli.progress import TRACK_OPTION
from slimkit.config.tracking import parse_track


def _print(console: Console, result: dict[str, Any], out: Path) -> None:
    table = Table(title=f"slimkit auto: {result['name']} (Pareto front, {result['quality']} vs measured latency)")
    for col in ("trial", "stages", "quality", "latency ms", "bytes", "feasible"):
        table.add_column(col, justify="left" if col in ("trial", "stages") else "right")
    for p in result["front"]:
        table.add_row(str(p["number"]), ", ".join(p.get("stages") or []) or "-", f"{p['quality']:.4f}",
                      f"{p['latency_ms']:.4g}", str(p["bytes"]), "yes" if p["feasible"] else "no")
    console.print(table)
    console.print(f"\n[bold]Verdict:[/] {result['verdict']}")
    console.print(f"Report: {(out / 'auto.html').resolve()}")
    if result.get("chosen"):
        console.print(f"Recipe: {(out / result['chosen']['recipe']).resolve()}")
    if result.get("deploy"):
        console.print(f"Artifact: {(out / result['deploy']['artifact']).resolve()}")


def register(app: typer.Typer) -> None:
    """Add the ``auto`` command to ``app``."""

    @app.command("auto")
    def auto_cmd(
        model: Annotated[str, typer.Argument(help="a recipe YAML (its auto: block is read) or a built-in model name")],
        data: Annotated[str | None, typer.Option("--data", help="dataset name (overrides the recipe's)")] = None,
        runtime: Annotated[str | None, typer.Option("--runtime", help="onnxruntime or torch")] = None,
        max_latency_ratio: Annotated[float | None, typer.Option("--max-latency-ratio", help="deployed/baseline latency, at most")] = None,
        max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop", help="in POINTS (1 = one point)")] = None,
        min_fidelity: Annotated[float | None, typer.Option("--min-fidelity", help="mean output cosine, at least")] = None,
        max_size_ratio: Annotated[float | None, typer.Option("--max-size-ratio", help="deployed/baseline bytes, at most")] = None,
        budget: Annotated[str | None, typer.Option("--budget", help="search wall clock: 90s, 30m, 1h")] = None,
        trials: Annotated[int | None, typer.Option("--trials", help="at most this many trials")] = None,
        backend: Annotated[str | None, typer.Option("--backend", help="local or ray")] = None,
        address: Annotated[str | None, typer.Option("--address", help="ray: cluster address (host:port)")] = None,
        workers: Annotated[int | None, typer.Option("--workers", help="ray: trials at once")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="output directory (default runs/<name>-auto)")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue: finished trials are not redone")] = False,
        track: Annotated[str | None, TRACK_OPTION] = None,
    ) -> None:
        """Find and deploy a compression that meets latency/accuracy/size constraints: profile, search, export."""
        from slimkit.auto import auto
        from slimkit.cli.progress import make_reporter, print_tracking
        from slimkit.progress import use_reporter

        settings: dict[str, Any] = {
            "runtime": runtime, "max_latency_ratio": max_latency_ratio, "min_fidelity": min_fidelity,
            "max_accuracy_drop": None if max_accuracy_drop is None else max_accuracy_drop / 100.0,
            "max_size_ratio": max_size_ratio, "budget": budget, "trials": trials, "backend": backend,
            "address": address, "workers": workers}
        tracking = parse_track(track) if track else None
        console, err_console = Console(), Console(stderr=True)
        with use_reporter(make_reporter(err_console)):
            result = auto(model, data=data, out=out, resume=resume, tracking=tracking, **settings)
        directory = out or Path("runs") / result["name"]
        _print(console, result, directory)
        print_tracking(directory)

__all__ = ["register"]
