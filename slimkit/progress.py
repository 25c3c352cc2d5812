"""Progress reporting without printing: library code calls :func:`track`; the CLI installs a rich
reporter with :func:`use_reporter`. The default reporter does nothing."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def update(self, **info: object) -> None: ...


class Reporter(Protocol):
    def start(self, description: str, total: int | None) -> Task: ...
    def finish(self, task: Task) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **info: object) -> None:
        pass


class _NullReporter:
    def start(self, description: str, total: int | None) -> Task:
        return _NullTask()

    def finish(self, task: Task) -> None:
        pass


_NULL = _NullReporter()
_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("slimkit_reporter", default=None)


@contextlib.contextmanager
def track(description: str, total: int | None = None) -> Iterator[Task]:
    """``with track("fine-tune", total=n) as t: ... t.advance()``."""
    reporter = _reporter.get() or _NULL
    task = reporter.start(description, total)
    try:
        yield task
    finally:
        reporter.finish(task)


@contextlib.contextmanager
def use_reporter(reporter: Reporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
