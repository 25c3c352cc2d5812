"""The CLI's consoles, a rich progress reporter for slimkit.progress and the run report table (CLI only).
Shared by every command module (app, quantize, sensitivity, search)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()
err_console = Console(stderr=True)


class _RichTask:
    def __init__(self, progress: Progress, task_id: Any, description: str) -> None:
        self.progress, self.id, self.description = progress, task_id, description

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.id, n)

    def update(self, **info: object) -> None:
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.progress.update(self.id, description=f"{self.description} {extra}")


class _PlainTask:
    def __init__(self, description: str, total: int | None) -> None:
        self.description, self.total, self.done, self.t0 = description, total, 0, time.perf_counter()
        self.info = ""

    def advance(self, n: int = 1) -> None:
        self.done += n

    def update(self, **info: object) -> None:
        self.info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


class PlainReporter:
    """For logs and pipes (no terminal): one line per finished top-level task, no live bars."""

    def __init__(self, console: Console) -> None:
        self.console, self.depth = console, 0

    def start(self, description: str, total: int | None) -> _PlainTask:
        self.depth += 1
        return _PlainTask(description, total)

    def finish(self, task: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            count = f" {task.done}/{task.total}" if task.total else ""
            info = f" {task.info}" if task.info else ""
            self.console.print(f"done: {task.description}{count}{info} in {time.perf_counter() - task.t0:.1f} s",
                               highlight=False)


def make_reporter(console: Console) -> RichReporter | PlainReporter:
    """Live bars on a terminal, plain lines otherwise (CI logs, pipes)."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console)


class RichReporter:
    """Shows one bar per running task; finished tasks disappear."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
        self.depth = 0

    def start(self, description: str, total: int | None) -> _RichTask:
        if self.depth == 0:
            self.progress.start()
        self.depth += 1
        return _RichTask(self.progress, self.progress.add_task(description, total=total), description)

    def finish(self, task: Any) -> None:
        self.progress.remove_task(task.id)
        self.depth -= 1
        if self.depth == 0:
            self.progress.stop()


def cli_reporter() -> Any:
    """Route slimkit.progress to a rich reporter on stderr for the duration of a ``with`` block."""
    from slimkit.progress import use_reporter

    return use_reporter(make_reporter(err_console))


def print_report(report: dict[str, Any], run_dir: Path) -> None:
    """The report of a run as a table, its constraints and verdict, on stdout."""
    from slimkit.pipeline.report.render import fmt, rows, seconds

    cols = [("accuracy", "acc"), ("size_bytes", "bytes"), ("sparsity", "sparsity"), ("macs", "MACs"),
            ("latency_median", "ms")]
    from rich import box
    from rich.table import Table

    table = Table(title=f"slimkit: {report['name']}", box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for _, label in cols:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("s", justify="right", no_wrap=True)
    for (label, m), sec in zip(rows(report), seconds(report), strict=True):
        table.add_row(label, *[fmt(k, m) for k, _ in cols], sec)
    console.print(table)
    for c in report.get("constraints", []):
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[c["met"]]
        value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
        console.print(f"  {c['name']}: limit {c['limit']}, value {value} -> {mark}")
    console.print(f"\n[bold]Verdict:[/] {report['verdict']}")
    console.print(f"Report: {(run_dir / 'report.html').resolve()}")
