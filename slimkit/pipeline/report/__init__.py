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
        "json": atomic_write_json(run_dir / "report.json", report),
        "md": atomic_write_text(run_dir / "report.md", render_markdown(report, layers)),
        "html": atomic_write_text(run_dir / "report.html", render_html(report, layers)),
    }
    return paths


def rewrite_report(run_dir: Path) -> dict[str, Path]:
    """Render report.md and report.html again from a finished run's report.json (e.g. after an upgrade)."""
    import json

    from slimkit.errors import ReportError

    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no report.json.",
                          hint="Pass the directory of a finished run (`slimkit run` writes report.json last).")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}", hint="Run the recipe again to rewrite it.") from None
    return write_report(Path(run_dir), report)


__all__ = ["render_html", "render_markdown", "rewrite_report", "write_report"]
