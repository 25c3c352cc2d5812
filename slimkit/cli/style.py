"""How the CLI reads: one place for help-page formatting and global-option parsing (the typer group class).

- ``--verbose``/``-v`` is accepted anywhere on the command line, not only before the subcommand;
- flags show no ``<bool>`` type, arguments read ``RECIPE`` / ``[SOURCE]`` in usage lines (not ``{recipe}``).
"""

from __future__ import annotations

import os
import types
from typing import Any

import click
from rich.console import Console
from typer.core import TyperArgument, TyperGroup, TyperOption

GLOBAL_FLAGS = ("--verbose", "-v")
PIPE_WIDTH = 200


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move ``--verbose``/``-v`` given after the subcommand to the front (before ``--``, never after)."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    found = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return found[:1] + head + args[end:]


def _usage_pieces(self: TyperArgument, ctx: click.Context) -> list[str]:
    name = (self.metavar or self.name or "").upper()
    name = name if self.required else f"[{name}]"
    return [name + ("..." if self.nargs != 1 else "")]


def tidy_params(command: click.Command) -> None:
    """Plain help for one command: no type label on flags, upper-case argument names in usage lines."""
    for param in command.params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
        elif isinstance(param, TyperArgument):
            param.metavar = param.metavar or (param.name or "").upper()
            param.get_usage_pieces = types.MethodType(_usage_pieces, param)  # type: ignore[method-assign]
    make_help_option = command.get_help_option

    def get_help_option(ctx: click.Context) -> click.Option | None:  # --help is built per call: a flag too
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option  # type: ignore[method-assign]


class SlimkitGroup(TyperGroup):
    """The ``slimkit`` command group (``typer.Typer(cls=SlimkitGroup)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy_params(self)
        for cmd in self.commands.values():
            tidy_params(cmd)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_flags(list(args)))


def make_console(*, stderr: bool = False) -> Console:
    """A rich console. On a terminal it follows the terminal's width; in a pipe or a file (no terminal, no
    COLUMNS) it is wide, so tables and messages are not cut or wrapped at rich's default of 80 columns."""
    console = Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=stderr)  # messages: one line each
    return console
