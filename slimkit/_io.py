"""Atomic file writes and safe loading shared by the package. Internal (underscore) but used across
packages on purpose: one place that writes files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Load weights safely: safetensors, or ``torch.load(weights_only=True)``. Never unpickles code.
    ``path`` may be ``pkg:<package>/<file>``, a file inside an installed package."""
    import pickle
    import zipfile

    import torch

    from slimkit.errors import ModelLoadError

    if str(path).startswith("pkg:"):
        # ``pkg:<package>/<file>``: a file shipped inside an installed package (slimkit.models.pretrained)
        from slimkit.models.pretrained import resolve_weights

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
