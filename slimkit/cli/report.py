"""``slimkit report DIR [--check] [--screenshot]``: render a run's (or a search's, or a comparison's) page again
from its JSON, and check it in headless Chromium: no console message, every image loaded, nothing requested
from outside the file. ``--screenshot`` keeps a PNG of the whole page beside it (e.g. ``runs/demo/report.png``).

Registered on the typer app by :func:`register` (called from slimkit/cli/app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slimkit.errors import ReportError


def render_page(directory: Path) -> Path:
    """Write the HTML page of ``directory`` again from its JSON and return the page's path."""
    if (directory / "report.json").is_file():
        from slimkit.pipeline.report import rewrite_report

        return rewrite_report(directory)["html"]
    from slimkit.pipeline.report import read_json

    if (directory / "search.json").is_file():
        from slimkit.search.summary import write_summary

        return write_summary(directory, read_json(directory / "search.json"))["html"]
    if (directory / "compare.json").is_file():
        from slimkit.pipeline.report.compare import write_comparison

        return write_comparison(directory, read_json(directory / "compare.json"))["html"]
    raise ReportError(f"{directory} holds no report.json, search.json or compare.json.",
                      hint="Pass the directory of a finished `slimkit run`, `slimkit search` or `slimkit compare`.")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""

    @app.command("report")
    def report_cmd(
        directory: Annotated[Path, typer.Argument(help="a run, search or comparison directory")],
        check: Annotated[bool, typer.Option("--check", help="open the page in headless Chromium and check it")] = False,
        screenshot: Annotated[bool, typer.Option("--screenshot", help="check, and keep a PNG of the whole page "
                                                                      "beside it")] = False,
    ) -> None:
        """Render the page of a run again from its JSON; check it in a real browser on demand."""
        console = Console()
        page = render_page(directory)
        console.print(f"Page: {page.resolve()}")
        if not (check or screenshot):
            return
        from slimkit.pipeline.report.browser import check_page

        result = check_page(page, screenshot=page.with_suffix(".png") if screenshot else None)
        if result.screenshot:
            console.print(f"Screenshot: {result.screenshot}")
        if not result.ok:
            raise ReportError(f"{page.name} has {len(result.problems)} problem(s) in Chromium:\n  - "
                              + "\n  - ".join(result.problems),
                              hint="This is a bug in slimkit's report rendering; please report it.")
        console.print(f"[green]ok[/]: Chromium loaded {page.name}: {result.images} image(s), no console message, "
                      "no request outside the file.")
