"""The CLI reads cleanly: every command's --help at 80 and 120 columns, global flags anywhere, wide pipes."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from slimkit.cli.app import app
from slimkit.cli.style import hoist_global_flags

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_listed():
    assert {"run", "demo", "validate", "eval", "inspect", "quantize", "export", "sensitivity", "search"} <= set(COMMANDS)


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_cleanly(command, columns):
    args = [command, "--help"] if command else ["--help"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)})
    assert r.exit_code == 0, r.output
    text = r.output
    assert "Usage:" in text
    assert "<bool>" not in text                       # flags carry no type label
    assert not re.search(r"\{[a-z_]+\}", text)        # usage names arguments RECIPE, not {recipe}
    assert "…" not in text  # rich's mark of a cut-off choice or help text
    widths = [len(line) for line in text.splitlines()]
    assert max(widths) <= columns, (max(widths), text)
    if command:
        assert "--help" in text


@pytest.mark.parametrize("args, expected", [
    (["eval", "runs/x", "--verbose"], ["--verbose", "eval", "runs/x"]),
    (["-v", "eval", "runs/x"], ["-v", "eval", "runs/x"]),
    (["run", "r.yaml", "-v", "--resume"], ["-v", "run", "r.yaml", "--resume"]),
    (["run", "--", "-v"], ["run", "--", "-v"]),
])
def test_global_flags_anywhere(args, expected):
    assert hoist_global_flags(args) == expected


def test_verbose_after_subcommand_is_accepted(tmp_path):
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.yaml"), "--verbose"])
    assert "No such option" not in r.output
    said = str(r.exception) + r.output
    assert "recipe file not found" in said or "no recipe file" in said


def test_console_is_wide_in_a_pipe(monkeypatch):
    from slimkit.cli.style import PIPE_WIDTH, make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert not console.is_terminal and console.width == PIPE_WIDTH  # tables in files are not cut at 80
    with console.capture() as cap:
        from rich.table import Table

        t = Table()
        for name in ("model", "accuracy", "bytes", "sparsity", "MACs", "ms", "seconds", "constraint", "verdict"):
            t.add_column(name, no_wrap=True)
        t.add_row("0 prune:structured-with-a-long-name", "98.44%", "78.3 KiB", "83.74%", "314.0K", "0.100", "5.2",
                  "max_accuracy_drop", "infeasible")
        console.print(t)
    assert "…" not in cap.get() and "infeasible" in cap.get()
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100
