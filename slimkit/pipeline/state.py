"""Run directory bookkeeping: a lock so two runs never write into one directory, and a state file
that records finished stages so ``--resume`` continues after the last one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json
from slimkit.errors import RunError

log = logging.getLogger(__name__)


def recipe_hash(resolved: dict[str, Any]) -> str:
    """Hash of the parts of a resolved recipe that change results (not evaluate/export/constraints)."""
    keep = {k: resolved[k] for k in ("seed", "model", "data", "stages") if k in resolved}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (and its parents) or raise :class:`RunError` saying why it cannot hold a run
    (a file, a device such as /dev/null, a path under a file, a read-only location)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        kind = "a file" if run_dir.is_file() else "not a directory (a device or socket)"
        raise RunError(f"--out {run_dir} is {kind}; a run needs a directory.",
                       hint="Choose a directory path for --out (it is created if missing).")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"cannot create the run directory {run_dir}: a part of the path is a file.",
                       hint="Choose a directory path for --out.") from None
    except OSError as exc:
        raise RunError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}.",
                       hint="Choose a writable location for --out.") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunError(f"the run directory {run_dir} is not writable.", hint="Choose a writable location for --out.")
    return run_dir


class RunLock:
    """An exclusive lock on the run directory: ``fcntl.flock`` on ``.lock``, which records the holder.

    The kernel drops a flock when its process ends (even by kill -9), so a lock left by a dead process is
    free to take; taking it is one atomic system call, so of several processes starting at once exactly one
    wins. A live holder makes :class:`RunError` name it. The file is unlinked on release while still held,
    and a taker checks that the file it locked is still the one at ``.lock``, so no two processes ever hold
    locks on different files of the same directory.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        prepare_run_dir(self.path.parent)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as exc:
                raise RunError(f"cannot create the lock {self.path}: {exc.strerror or exc}.",
                               hint="Choose a writable --out directory.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_fd(fd)
                os.close(fd)
                raise RunError(
                    f"another slimkit run is writing into {self.path.parent} ({holder or 'holder unknown'}).",
                    hint="Wait for it to finish, or choose another --out directory.",
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and unlinked) it between our open and flock: retry
                os.close(fd)
                continue
            previous = _read_fd(fd)
            if previous and _names_live_process(previous):  # written by a slimkit without flock, still running
                os.close(fd)
                raise RunError(f"another slimkit run is writing into {self.path.parent} ({previous}).",
                               hint=f"Wait for it to finish, or choose another --out directory (if no slimkit "
                                    f"run uses it, delete {self.path}).")
            if previous:
                log.warning("taking over the lock %s left by a process that has ended (%s)", self.path, previous)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
            self._fd = fd
            return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _names_live_process(text: str) -> bool:
    """Whether a lock record ``pid=N host=H`` names another live process on this host."""
    try:
        fields = dict(part.split("=", 1) for part in text.split())
        pid = int(fields["pid"])
        if fields.get("host") != socket.gethostname() or pid == os.getpid():
            return False
        os.kill(pid, 0)
    except PermissionError:
        return True  # exists, owned by another user
    except (OSError, ValueError, KeyError):
        return False
    return True


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json`` as written by :meth:`RunState.save`, or :class:`RunError` (never a raw exception)."""
    hint = "Delete the run directory or choose another --out."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunError(f"{path} is corrupt ({type(exc).__name__}: {str(exc)[:120]}).", hint=hint) from None
    ok = (isinstance(data, dict) and isinstance(data.get("recipe_hash"), str)
          and isinstance(data.get("stages"), dict) and isinstance(data.get("baseline"), (dict, type(None)))
          and all(isinstance(k, str) and k.isdigit() and isinstance(v, dict) for k, v in data["stages"].items()))
    if not ok:
        raise RunError(f"{path} is not a slimkit run state (expected recipe_hash, baseline and stages).", hint=hint)
    return data


class RunState:
    """``state.json``: the recipe hash, the baseline metrics and each finished stage's record."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "state.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            self.data = _read_state(self.path)

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def start(self, hash_: str, *, resume: bool) -> None:
        if self.exists and not resume:
            raise RunError(
                f"{self.path.parent} already holds a run.",
                hint="Pass --resume to continue it, or choose another --out directory.",
            )
        if self.exists and self.data.get("recipe_hash") != hash_:
            raise RunError(
                f"cannot resume {self.path.parent}: the recipe's model, data, seed or stages changed since it started.",
                hint="Run into a new --out directory.",
            )
        if not self.exists:
            self.data = {"recipe_hash": hash_, "baseline": None, "stages": {}}
            self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def stage(self, index: int) -> dict[str, Any] | None:
        return self.data["stages"].get(str(index))

    def finish_stage(self, index: int, record: dict[str, Any]) -> None:
        self.data["stages"][str(index)] = record
        self.save()

    def forget_from(self, index: int) -> None:
        """Drop records of stages at or after ``index`` (they will be recomputed)."""
        self.data["stages"] = {k: v for k, v in self.data["stages"].items() if int(k) < index}
        self.save()
