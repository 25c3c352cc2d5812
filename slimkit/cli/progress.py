"""A rich progress reporter for slimkit.progress (CLI only)."""

from __future__ import annotations

import time
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
