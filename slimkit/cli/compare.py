"""``slimkit compare RUN_DIR... [--out DIR]``: the final models of several runs side by side (quality, bytes,
MACs, measured latency) with the Pareto front marked; writes compare.json, compare.md and compare.html.

Registered on the typer app by :func:`register` (called from slimkit/cli/app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to ``app``."""

    @app.command("compare")
    def compare_cmd(
        runs: Annotated[list[Path], typer.Argument(help="two or more finished run directories")],
        out: Annotated[Path, typer.Option("--out", "-o", help="where compare.md/.html/.json go")] = Path("runs/compare"),
    ) -> None:
        """Compare finished runs side by side and mark the Pareto front."""
        from slimkit.pipeline.report.compare import COLUMNS, cells, compare_runs, write_comparison

        console = Console()
        cmp = compare_runs(runs)
        quality = cmp["quality"] or "accuracy"
        # a short table that fits 80 columns; compare.md/.html carry every column
        shown = [(quality, quality[:3]), ("bytes", "bytes"), ("MACs", "MACs"), ("latency ms", "ms"),
                 ("vs own baseline", "speed-up")]
        table = Table(title="slimkit: runs compared", box=box.SIMPLE_HEAD)
        table.add_column("run", no_wrap=True)
        for _, title in shown:
            table.add_column(title, justify="right", no_wrap=True)
        table.add_column("front", no_wrap=True)
        for row in cmp["runs"]:
            values = dict(zip(COLUMNS, cells(row), strict=True))
            table.add_row(row["run"], *(values[key] for key, _ in shown),
                          "[bold red]yes[/]" if row["pareto"] else "no")
        console.print(table)
        objs = ", ".join(o["name"] for o in cmp["objectives"]) or "none"
        console.print(f"Pareto front over: {objs}.")
        for row in cmp["runs"]:
            if row["dominated_by"]:
                console.print(f"  {row['run']} is dominated by " + ", ".join(row["dominated_by"]) + ".")
        for note in cmp["notes"]:
            console.print(f"  {note}")
        paths = write_comparison(out, cmp)
        console.print(f"Written: {paths['md']}, {paths['html'].resolve()}")
