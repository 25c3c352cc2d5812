"""``slimkit search SEARCH.yaml [--out DIR] [--resume]``: the constraint search on the command line.

Registered on the typer app by :func:`register` (called from slimkit/cli/app.py), so the command also
exists when the app module runs as ``python -m slimkit.cli.app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from slimkit.cli.progress import TRACK_OPTION
from slimkit.config.tracking import parse_track


def _print_search(console: Console, result: dict[str, Any], out: Path) -> None:
    from slimkit.pipeline.report.render import fmt

    o = result["objective"]
    best = (result.get("best") or {}).get("number")
    paths = list(result.get("space") or {})
    short = [p.split(".")[-1] for p in paths]
    labels = short if len(set(short)) == len(short) else paths
    table = Table(title=f"slimkit search: {result['name']} ({o['direction']} {o['metric']})")
    for col in ("trial", "status", *labels, o["metric"], "acc", "bytes", "sparsity", "s"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right", no_wrap=True)
    for r in result["trials"]:
        m = r.get("metrics") or {}
        status = r["state"] if r["state"] != "complete" else ("[green]feasible[/]" if r.get("feasible")
                                                               else "[red]infeasible[/]")
        params = [_value(r["params"].get(p, "-")) for p in paths]
        obj = "n/a" if r.get("objective") is None else f"{r['objective']:.6g}"
        label = f"{r['number']}{' *' if r['number'] == best else ''}"
        sec = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        table.add_row(label, status, *params, obj,
                      *(fmt(k, m) if m else "n/a" for k in ("accuracy", "size_bytes", "sparsity")), sec)
    console.print(table)
    if labels != paths:
        console.print("  " + ", ".join(f"{lb} = {p}" for lb, p in zip(labels, paths, strict=True)))
    console.print(f"\n[bold]Verdict:[/] {result['verdict']}")
    console.print(f"Summary: {(out / 'search.html').resolve()}")
    if best is not None:
        console.print(f"Best run: {(out / 'best').resolve()}")


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def register(app: typer.Typer) -> None:
    """Add the ``search`` command to ``app``."""

    @app.command("search")
    def search_cmd(
        config: Annotated[Path, typer.Argument(help="YAML search config (base recipe, space, objective)")],
        out: Annotated[Path | None, typer.Option("--out", "-o", help="search directory (default runs/<name>)")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue a search: finished trials are kept")] = False,
        check: Annotated[bool, typer.Option("--check", help="validate and show the first proposals; compute nothing")] = False,
        track: Annotated[str | None, TRACK_OPTION] = None,
    ) -> None:
        """Search recipe settings: run trials through the runner, keep the best that meets the constraints."""
        from slimkit.cli.progress import cli_reporter, console, print_tracking
        from slimkit.config.search import load_search
        from slimkit.search.runner import search

        plan = load_search(config)  # every problem, before any compute
        tracking = parse_track(track) if track else None
        directory = out or Path("runs") / plan.config.name
        if check:
            from slimkit.search.runner import propose

            cfg = plan.config
            console.print(f"[green]ok[/]: {config}: {len(plan.params)} setting(s), {cfg.trials} trial(s), "
                          f"{plan.direction} {plan.metric}, backend {cfg.backend}")
            for i, params in enumerate(propose(plan, min(3, cfg.trials))):
                console.print(f"  trial {i}: " + ", ".join(f"{k}={_value(v)}" for k, v in params.items()))
            return
        with cli_reporter():
            result = search(plan, out=directory, resume=resume, tracking=tracking)
        _print_search(console, result, directory)
        print_tracking(directory)


__all__ = ["register"]
