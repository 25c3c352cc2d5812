"""The one YAML reader for recipes, search configs and run directories: safe tags only, UTF-8 only,
duplicate keys refused (with the key and its line), and limits on size, nesting and alias expansion so a
hostile file fails here with a :class:`RecipeError` instead of exhausting memory or the stack later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from slimkit.errors import RecipeError

MAX_BYTES = 4 * 1024 * 1024
"""A recipe is a few KB; refuse files larger than this before parsing."""
MAX_DEPTH = 64
"""Deepest nesting of mappings/lists (a recipe needs about 6)."""
MAX_NODES = 200_000
"""Most values after expanding every alias (an alias bomb expands exponentially)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with a nesting limit and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limit(f"refused: nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, (MappingNode, SequenceNode)) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # SafeLoader refuses unhashable keys itself, with a mark
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _Limit(f"duplicate key '{key}' at line {line} (first at line {seen[key]}); "
                             "YAML would silently keep only the last one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _Limit(Exception):
    """A limit of this reader was exceeded (turned into RecipeError by :func:`parse_yaml`)."""


def _expanded_size(root: Node) -> int:
    """The number of nodes once every alias is expanded, computed without expanding (memoised)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: no recursion on deep input
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_yaml(text: str, *, source: str | None = None) -> Any:
    """Parse YAML text under this module's limits; every failure is a :class:`RecipeError`."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise RecipeError([("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}")], source=source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node)
        if n > MAX_NODES:
            raise _Limit(f"refused: expands to more than {MAX_NODES:,} values once its aliases (*name) are "
                         "resolved (an alias bomb?)")
        return loader.construct_document(node)
    except _Limit as exc:
        raise RecipeError([("", f"{exc}.")], source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RecipeError([("", f"not valid YAML ({where}): {getattr(exc, 'problem', None) or exc}")],
                          source=source) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        # e.g. a timestamp or number SafeLoader cannot represent
        raise RecipeError([("", f"cannot read the YAML: {type(exc).__name__}: {str(exc)[:200]}")],
                          source=source) from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, *, what: str = "recipe") -> Any:
    """Read a YAML file (a recipe, a search config, a run's ``recipe.yaml``) as data, or raise
    :class:`RecipeError` saying what is wrong with the file itself."""
    path = Path(path)
    if not path.exists():
        raise RecipeError([("", f"{what} file not found: {path}")])
    if path.is_dir():
        raise RecipeError([("", f"{path} is a directory; expected a YAML {what} file")])
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError([("", f"{path} is {size:,} bytes; a {what} is at most {MAX_BYTES:,} bytes")])
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError([("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                                "cannot be decoded (is it a binary file, or saved in another encoding?)")],
                          source=str(path)) from None
    if "\x00" in text:
        raise RecipeError([("", f"holds a NUL byte at offset {text.index(chr(0))}; a {what} is plain text")],
                          source=str(path))
    return parse_yaml(text, source=str(path))


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "parse_yaml", "read_yaml_file"]
