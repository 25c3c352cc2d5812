"""Run directory bookkeeping: a lock so two runs never write into one directory, and a state file
that records finished stages so ``--resume`` continues after the last one."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json
from slimkit.errors import RunError


def recipe_hash(resolved: dict[str, Any]) -> str:
    """Hash of the parts of a resolved recipe that change results (not evaluate/export/constraints)."""
    keep = {k: resolved[k] for k in ("seed", "model", "data", "stages") if k in resolved}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunLock:
    """An exclusive lock file ``.lock`` in the run directory, holding the owner's pid.

    A stale lock (its process is gone) is taken over; a live one raises :class:`RunError`.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunError(
                    f"another slimkit run is writing into {self.path.parent} ({self.path.read_text().strip()}).",
                    hint="Wait for it to finish, or choose another --out directory.",
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"pid={os.getpid()} host={socket.gethostname()}\n")
            return self
        raise RunError(f"could not take the lock {self.path}.")

    def _stale(self) -> bool:
        try:
            text = self.path.read_text()
            fields = dict(part.split("=", 1) for part in text.split())
            if fields.get("host") != socket.gethostname():
                return False
            os.kill(int(fields["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError):
            return True
        return False

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


class RunState:
    """``state.json``: the recipe hash, the baseline metrics and each finished stage's record."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "state.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise RunError(f"{self.path} is corrupt ({exc}).",
                               hint="Delete the run directory or choose another --out.") from None

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
