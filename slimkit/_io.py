"""Atomic file writes and safe loading shared by the package. Internal (underscore) but used across
packages on purpose: one place that writes files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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
