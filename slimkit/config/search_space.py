"""A search space over recipe settings: parameters addressed by path, applied to a resolved recipe dict.

Paths use the recipe's own error paths: ``stages[0].prune.sparsity``, ``model.kwargs.widths``,
``stages`` (the whole stage list). ``stages[prune]`` selects the settings of the one ``prune`` stage
whatever its position, so a parameter keeps its meaning when a categorical parameter on ``stages``
changes the list. A parameter whose path does not exist in the proposed recipe (``stages[1]...`` when
the chosen list has one stage, ``stages[quantize]...`` when it has no quantize stage) is *inactive*: it
is not sampled for that trial.

Pure Python: nothing here imports optuna or torch. :func:`suggest` takes any object with Optuna's
``suggest_float`` / ``suggest_int`` / ``suggest_categorical`` methods.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[([A-Za-z_][A-Za-z0-9_-]*)\]|(\.)")

Token = str | int | tuple[str, str]
"""A dict key, a list index, or ``("kind", name)``: the settings of the stage whose pass is ``name``."""


class PathError(ValueError):
    """A path that cannot be parsed."""


def parse_path(path: str) -> list[Token]:
    """``"stages[0].prune.sparsity"`` -> ``["stages", 0, "prune", "sparsity"]``;
    ``"stages[prune].sparsity"`` -> ``["stages", ("kind", "prune"), "sparsity"]``."""
    if not isinstance(path, str) or not path:
        raise PathError("a path is a non-empty string such as 'stages[0].prune.sparsity'")
    tokens: list[Token] = []
    pos = 0
    expect_name = True  # after '.', or at the start, a name must follow
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            raise PathError(f"cannot parse {path!r} at character {pos + 1} ({path[pos]!r}); "
                            "use names, [index] and [pass], e.g. 'stages[0].prune.sparsity'")
        name, index, kind, dot = m.groups()
        if dot:
            if expect_name:
                raise PathError(f"cannot parse {path!r}: empty name before character {pos + 1}")
            expect_name = True
        elif name is not None:
            if not expect_name:
                raise PathError(f"cannot parse {path!r}: '.' missing before {name!r}")
            tokens.append(name)
            expect_name = False
        else:
            if expect_name and tokens:
                raise PathError(f"cannot parse {path!r}: a name must follow '.'")
            if not tokens:
                raise PathError(f"cannot parse {path!r}: a path starts with a name")
            tokens.append(int(index) if index is not None else ("kind", kind))
            expect_name = False
        pos = m.end()
    if expect_name:
        raise PathError(f"cannot parse {path!r}: it ends with '.'")
    return tokens


class _Inactive(Exception):
    pass


def _step(container: Any, token: Token, *, create: bool, stage: bool = False) -> Any:
    """One step down. ``stage``: ``container`` is a stage mapping ``{pass: settings}`` (an item of
    ``stages``), where a missing key means the path addresses another pass: inactive, never created."""
    if isinstance(token, tuple):
        if not isinstance(container, list):
            raise _Inactive
        hits = [s for s in container if isinstance(s, dict) and len(s) == 1 and token[1] in s]
        if len(hits) != 1:
            raise _Inactive
        body = hits[0][token[1]]
        if body is None and create:
            body = hits[0][token[1]] = {}
        return body
    if isinstance(token, int):
        if not isinstance(container, list) or token >= len(container):
            raise _Inactive
        return container[token]
    if not isinstance(container, dict):
        raise _Inactive
    if token not in container:
        if stage or not create:
            raise _Inactive
        container[token] = {}
    elif container[token] is None and create:
        container[token] = {}  # e.g. prune.finetune: null -> {epochs: ...}; the config fills the defaults
    return container[token]


def _is_stage_path(tokens: list[Token]) -> bool:
    return len(tokens) == 2 and tokens[0] == "stages" and isinstance(tokens[1], int)


def is_active(data: dict[str, Any], tokens: list[Token]) -> bool:
    """Whether ``tokens`` addresses something in ``data`` (its parent exists; the last key may be new)."""
    try:
        _parent(copy.deepcopy(data), tokens)
    except _Inactive:
        return False
    return True


def _parent(data: Any, tokens: list[Token]) -> tuple[Any, Token]:
    cur = data
    for i, tok in enumerate(tokens[:-1]):
        cur = _step(cur, tok, create=True, stage=_is_stage_path(tokens[:i]))
    last = tokens[-1]
    if isinstance(last, tuple):
        raise _Inactive  # a path ends with a key or an index, not a stage selector
    if isinstance(last, int):
        if not isinstance(cur, list) or last >= len(cur):
            raise _Inactive
    elif not isinstance(cur, dict) or (last not in cur and _is_stage_path(tokens[:-1])):
        raise _Inactive
    return cur, last


def set_path(data: dict[str, Any], tokens: list[Token], value: Any) -> bool:
    """Set ``value`` at ``tokens`` in ``data`` (in place). Returns False, changing nothing, when inactive."""
    try:
        parent, last = _parent(data, tokens)
    except _Inactive:
        return False
    parent[last] = copy.deepcopy(value)
    return True


def get_path(data: Any, tokens: list[Token]) -> Any:
    cur = data
    for i, tok in enumerate(tokens):
        cur = _step(cur, tok, create=False, stage=_is_stage_path(tokens[:i]))
    return cur


def is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


@dataclass
class Param:
    """One searched setting. ``kind`` is ``float``, ``int`` or ``categorical``."""

    path: str
    tokens: list[Token]
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    labels: list[Any] = field(default_factory=list)
    """Categorical: what Optuna samples (the choices themselves when they are scalars, else names)."""
    values: list[Any] = field(default_factory=list)
    """Categorical: the value written into the recipe for each label."""

    def candidates(self) -> list[tuple[str, Any]]:
        """(where, value) pairs checked before any compute: both bounds, or every choice."""
        if self.kind == "categorical":
            return [(f"choices[{i}]", v) for i, v in enumerate(self.values)]
        return [("low", self.low), ("high", self.high)]

    def value_of(self, sampled: Any) -> Any:
        if self.kind == "categorical":
            return self.values[self.labels.index(sampled)]
        return sampled

    @property
    def depth(self) -> int:
        return len(self.tokens)


def choice_label(value: Any, index: int) -> Any:
    """The name Optuna samples for a categorical choice: the value itself when it is a scalar; for a
    stage list, the passes joined by '+' (``prune+quantize``); otherwise ``choice<i>``."""
    if is_primitive(value):
        return value
    if isinstance(value, list) and all(isinstance(s, dict) and len(s) == 1 for s in value):
        return "+".join(next(iter(s)) for s in value) or "none"
    return f"choice{index}"


def expand_stage_choice(choice: Any, base_stages: list[dict[str, Any]]) -> tuple[Any, str | None]:
    """A choice for ``stages``: a list whose items are stage mappings or pass names of the base recipe's
    stages (``[prune, quantize]``). Returns (stage list, problem or None)."""
    if not isinstance(choice, list):
        return choice, f"a choice for 'stages' is a list of stages, got {type(choice).__name__}"
    out = []
    for item in choice:
        if isinstance(item, str):
            hits = [s for s in base_stages if item in s]
            if len(hits) != 1:
                have = ", ".join(next(iter(s)) for s in base_stages) or "none"
                why = "no" if not hits else f"{len(hits)}"
                return choice, (f"'{item}' names {why} stage(s) of the base recipe (its stages: {have}); "
                                "name a pass that appears exactly once there, or write the stage out in full")
            out.append(copy.deepcopy(hits[0]))
        else:
            out.append(copy.deepcopy(item))
    return out, None


def order(params: list[Param]) -> list[Param]:
    """Shorter paths first, so a choice of a whole list or mapping is applied before its settings."""
    return sorted(params, key=lambda p: p.depth)


def suggest(trial: Any, params: list[Param], base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample every active parameter through ``trial`` and return (recipe dict, {path: sampled})."""
    data = copy.deepcopy(base)
    sampled: dict[str, Any] = {}
    for p in order(params):
        if not is_active(data, p.tokens):
            continue
        if p.kind == "float":
            v: Any = trial.suggest_float(p.path, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            v = trial.suggest_int(p.path, int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
        else:
            v = trial.suggest_categorical(p.path, p.labels)
        set_path(data, p.tokens, p.value_of(v))
        sampled[p.path] = v
    return data, sampled


def apply(params: list[Param], base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a trial's recipe dict from its sampled values (as recorded in search.json)."""
    data = copy.deepcopy(base)
    for p in order(params):
        if p.path in sampled and is_active(data, p.tokens):
            set_path(data, p.tokens, p.value_of(sampled[p.path]))
    return data


__all__ = ["Param", "PathError", "apply", "choice_label", "expand_stage_choice", "get_path", "is_active", "is_primitive",
           "order", "parse_path", "set_path", "suggest"]
