"""Which layers a pass changes, decided once for every pass (see docs/layer-selection.md).

Every pass config that acts on layers has two fields:

- ``skip``: patterns of layers the pass leaves alone (in recipes and in Python);
- ``filter_fn``: Python only, ``filter_fn(module, name) -> bool`` as in torchao: True for the layers the
  pass may change. Not written to recipes or reports.

A layer is changed when it is of a type the pass handles (the pass's ``include``, where it has one), no
``skip`` pattern matches it and ``filter_fn``, when given, returns True. A pattern matches the module named
``name`` when it is

- a glob (``fnmatch``, case-sensitive) of the qualified module name: ``fc``, ``features.0``, ``layer*.conv1``;
- a glob that matches a module containing it: ``features.0`` also matches ``features.0.conv``;
- the class name of the module: ``Linear``, ``Conv2d``, ``BertSelfAttention``.

Structured pruning reads the same fields: a skipped module keeps its output width.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field

LayerFilterFn = Callable[[Any, str], bool]
"""``filter_fn(module, name) -> bool``: True for the layers a pass may change."""

__all__ = ["LayerFilterFn", "filter_fn_field", "is_skipped", "match_layer", "skip_field"]


def match_layer(name: str, module: Any, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` that matches the module ``name`` (see the module docstring), or None."""
    cls = type(module).__name__
    for pat in patterns:
        if cls == pat or fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name, pat + ".*"):
            return pat
    return None


def is_skipped(name: str, module: Any, skip: Iterable[str] = (), filter_fn: LayerFilterFn | None = None) -> bool:
    """Whether a pass must leave the module ``name`` alone: a ``skip`` pattern matches it, or ``filter_fn``
    is given and returns False for it."""
    if match_layer(name, module, skip) is not None:
        return True
    return filter_fn is not None and not filter_fn(module, name)


def skip_field(what: str = "left as they are") -> Any:
    """The ``skip`` field of a pass config: module-name globs or class names of layers the pass leaves alone."""
    return Field(default_factory=list, description=f"module-name globs or class names of layers {what}")


def filter_fn_field() -> Any:
    """The ``filter_fn`` field of a pass config (Python only, never serialized)."""
    return Field(None, exclude=True, description="Python only: filter_fn(module, name) -> True for the layers "
                                                 "the pass may change (as in torchao)")
