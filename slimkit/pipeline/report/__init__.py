"""Write a run's report: report.json (the contract), report.md and a self-contained report.html."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json, atomic_write_text
from slimkit.pipeline.report.render import render_html, render_markdown

log = logging.getLogger(__name__)


def write_report(run_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write the three report files atomically and return their paths. The per-layer views are read from
    the run's baseline and final checkpoints (left out, with a warning, when they cannot be read)."""
    from slimkit.errors import ModelLoadError
    from slimkit.pipeline.report.layers import run_layers

    run_dir = Path(run_dir)
    try:
        layers = run_layers(run_dir)
    except ModelLoadError as exc:
        log.warning("per-layer views left out of the report: %s", exc)
        layers = {}
    paths = {
        "md": atomic_write_text(run_dir / "report.md", render_markdown(report, layers)),
        "html": atomic_write_text(run_dir / "report.html", render_html(report, layers)),
    }
    paths["json"] = atomic_write_json(run_dir / "report.json", report)  # last: it exists only for a finished run
    return paths


def read_json(path: Path) -> dict[str, Any]:
    """A run's report.json (or a search's search.json, a comparison's compare.json); ReportError if unreadable."""
    import json

    from slimkit.errors import ReportError

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path.parent} has no {path.name}: it is not a finished run.",
                          hint="Pass the directory of a finished `slimkit run` (it writes report.json last).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for json
        raise ReportError(f"cannot read {path}: {str(exc)[:300] or type(exc).__name__}",
                          hint="Run it again to rewrite it.") from None


def read_report(run_dir: Path) -> dict[str, Any]:
    """A finished run's report.json, checked against the report schema
    (:func:`slimkit.pipeline.report.schema.check_report`); ReportError if missing, unreadable or malformed."""
    from slimkit.pipeline.report.schema import check_report

    path = Path(run_dir) / "report.json"
    return check_report(read_json(path), path)


def rewrite_report(run_dir: Path) -> dict[str, Path]:
    """Render report.md and report.html again from a finished run's report.json (e.g. after an upgrade)."""
    return write_report(Path(run_dir), read_report(Path(run_dir)))


__all__ = ["read_json", "read_report", "render_html", "render_markdown", "rewrite_report", "write_report"]
