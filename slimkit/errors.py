"""Typed errors. Every error a user can cause is a :class:`SlimkitError` whose message says
what was passed, what was expected and what to do. The CLI catches them once and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlimkitError(Exception):
    """Base class of every error slimkit raises on purpose (a user error: CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        # a multi-line message (a list of problems) gets its hint on a line of its own
        sep = "\n" if "\n" in message else " "
        super().__init__(message if not hint else f"{message}{sep}{hint}")


class RecipeError(SlimkitError):
    """A recipe or config is invalid. ``problems`` lists every problem as ``(path, message)``."""

    def __init__(self, problems: list[tuple[str, str]] | str, *, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} problem(s){where}:"]
        for path, msg in problems:
            lines.append(f"  - {path}: {msg}" if path else f"  - {msg}")
        super().__init__("\n".join(lines), hint="Fix them and run `slimkit validate RECIPE` again.")


class ConfigError(SlimkitError):
    """A config is valid on its own but cannot be applied to this model (e.g. per-channel on a layer
    without channels)."""


class ModelLoadError(SlimkitError):
    """A model or its weights cannot be loaded (missing file, truncated checkpoint, unsafe pickle)."""


class DataError(SlimkitError):
    """A dataset is missing, malformed or of the wrong shape."""


class ExportError(SlimkitError):
    """Export failed or the exported artifact does not match the PyTorch model."""


class GraphError(SlimkitError):
    """The model graph holds an operation that a structural pass cannot handle safely."""


class ConstraintError(SlimkitError):
    """Constraints cannot be met or are contradictory."""


class RunError(SlimkitError):
    """A run directory is locked, incompatible with --resume, or otherwise unusable."""


class ReportError(SlimkitError):
    """A report, summary or comparison cannot be rendered or checked (missing run files, a browser failure)."""


class DivergenceError(SlimkitError):
    """Training diverged: the loss became NaN/inf or exploded. The runner stops that stage and delivers the
    best earlier model (see ``Recipe.deliver``)."""


class DiskFullError(RunError):
    """A write failed because the disk (or quota) is full; the message names the path and the space needed."""


class DependencyError(SlimkitError):
    """An optional dependency or offline model package is not installed."""


class TrackingError(SlimkitError):
    """Experiment tracking failed: the tracking store cannot be reached or refuses the run. The run itself
    finished; its files are in the run directory."""


class DeviceError(SlimkitError):
    """The requested device is not available (``device: cuda`` on a machine without a CUDA device)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` when a close match exists, else ``""``."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""
