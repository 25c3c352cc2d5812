"""Write a run's report: report.json (the contract), report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json, atomic_write_text
from slimkit.pipeline.report.render import render_html, render_markdown


def write_report(run_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write the three report files atomically and return their paths."""
    run_dir = Path(run_dir)
    paths = {
        "md": atomic_write_text(run_dir / "report.md", render_markdown(report)),
        "html": atomic_write_text(run_dir / "report.html", render_html(report)),
    }
    paths["json"] = atomic_write_json(run_dir / "report.json", report)  # last: it exists only for a finished run
    return paths


__all__ = ["render_html", "render_markdown", "write_report"]
