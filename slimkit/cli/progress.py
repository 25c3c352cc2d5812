"""The CLI's consoles, a rich progress reporter for slimkit.progress and the run report table (CLI only).
Shared by every command module (app, quantize, sensitivity, search)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from slimkit.cli.style import make_console

TRACK_OPTION = typer.Option(
    "--track", metavar="mlflow[:URI]",
    help="log to MLflow: 'mlflow' (a local store in the output directory) or 'mlflow:URI' (a tracking server or "
         "store); needs pip install slimkit\\[tracking]")

REFRESH_S = 0.25  # bars are redrawn from the working thread at least this often (see RichReporter)
PLAIN_EVERY_S = 10.0  # in a pipe, a progress line at most this often

console = make_console()  # wide in pipes and files: tables are not cut at 80 columns
err_console = make_console(stderr=True)


class _RichTask:
    def __init__(self, progress: Progress, task_id: Any, description: str, reporter: RichReporter) -> None:
        self.progress, self.id, self.description, self.reporter = progress, task_id, description, reporter

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.id, n)
        self.reporter.maybe_refresh()

    def update(self, **info: object) -> None:
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.progress.update(self.id, description=f"{self.description} {extra}")
        self.reporter.maybe_refresh()


class _PlainTask:
    def __init__(self, description: str, total: int | None, reporter: PlainReporter) -> None:
        self.description, self.total, self.done, self.t0 = description, total, 0, time.perf_counter()
        self.info, self.reporter = "", reporter

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.reporter.maybe_line(self)

    def update(self, **info: object) -> None:
        self.info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.reporter.maybe_line(self)

    def line(self, prefix: str) -> str:
        count = ""
        if self.total:
            count = f" {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
        elif self.done:
            count = f" {self.done}"
        info = f" {self.info}" if self.info else ""
        return f"{prefix}{self.description}{count}{info}, {time.perf_counter() - self.t0:.1f} s"


class PlainReporter:
    """For logs and pipes (no terminal): no live bars; a line for every running task at most every
    ``every_s`` seconds (so a long training shows progress), and one line per finished top-level task."""

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S) -> None:
        self.console, self.depth, self.every_s = console, 0, every_s
        self.last = time.perf_counter()

    def start(self, description: str, total: int | None) -> _PlainTask:
        self.depth += 1
        return _PlainTask(description, total, self)

    def maybe_line(self, task: _PlainTask) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.console.print(task.line("... "), highlight=False)

    def finish(self, task: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.last = time.perf_counter()
            self.console.print(task.line("done: "), highlight=False)


def make_reporter(console: Console) -> RichReporter | PlainReporter:
    """Live bars on a terminal, plain lines otherwise (CI logs, pipes)."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console)


class _CountColumn(MofNCompleteColumn):
    """``12/380`` when the total is known, ``12`` when only steps are counted, nothing otherwise (not ``0/?``)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{int(task.completed)}" if task.completed else "", style="progress.download")
        return super().render(task)


class RichReporter:
    """Shows one bar per running task; finished tasks disappear. Besides rich's refresh thread, the
    working thread redraws at least every ``REFRESH_S`` as it advances: with torch busy on every core the
    refresh thread can starve and leave a bar frozen long after the work moved on."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 _CountColumn(), TimeElapsedColumn(), console=console, transient=True)
        self.depth = 0
        self.last = time.perf_counter()

    def maybe_refresh(self) -> None:
        now = time.perf_counter()
        if now - self.last >= REFRESH_S:
            self.last = now
            self.progress.refresh()

    def start(self, description: str, total: int | None) -> _RichTask:
        if self.depth == 0:
            self.progress.start()
        self.depth += 1
        return _RichTask(self.progress, self.progress.add_task(description, total=total), description, self)

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
    from slimkit.pipeline.report.render import columns, fmt, rows, seconds

    cols = columns(report, [("accuracy", "acc"), ("size_bytes", "bytes"), ("sparsity", "sparsity"), ("macs", "MACs"),
                            ("latency_median", "ms")])
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
    print_tracking(run_dir)


def print_tracking(out: Path) -> None:
    """Where a tracked run or search was logged (its ``tracking.json``), if it was."""
    path = out / "tracking.json"
    if path.is_file():
        t = json.loads(path.read_text())
        console.print(f"MLflow: run {t['run_id']} in experiment {t['experiment']!r} at {t['uri']}", highlight=False)
