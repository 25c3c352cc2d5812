"""Run search trials as Ray tasks: ``backend: ray`` in a search config.

Without ``address`` Ray starts on this machine with ``num_cpus=workers`` (one CPU per trial); with
``address`` (``ray://host:10001`` or ``auto``) the trials go to that cluster, whose nodes need slimkit
installed and the search directory on a shared filesystem (each trial writes ``<out>/trials/<n>/``).
A Ray that is already initialised in this process is used as it is and left running.
"""

from __future__ import annotations

import logging
from typing import Any

from slimkit.errors import DependencyError, RunError

log = logging.getLogger(__name__)


def _run_trial_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from slimkit.search.trial import run_trial

    return run_trial(*args, **kwargs)


class RayExecutor:
    """Keeps up to ``workers`` trials running as Ray tasks; ``wait()`` returns the first to finish."""

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        self.capacity = workers
        self.address = address
        self._pending: dict[Any, int] = {}
        self._started = False

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise DependencyError("backend: ray needs the ray package.", hint="pip install ray") from exc
        self._ray = ray
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.capacity, include_dashboard=False, logging_level=logging.WARNING,
                             log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - Ray raises many types when it cannot start
                where = f"the cluster at {self.address}" if self.address else "a local Ray instance"
                raise RunError(f"could not start {where}: {type(exc).__name__}: {exc}",
                               hint="Check the address, or use backend: local.") from None
            self._started = True
        self._task = ray.remote(num_cpus=1, max_retries=0)(_run_trial_task)
        # per-trial threads: one CPU each, matching the task's reservation
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in list(self._pending):
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        if self._started:
            self._ray.shutdown()

    def submit(self, n: int, *args: Any, **kwargs: Any) -> None:
        ref = self._task.remote(*args, threads=1, **kwargs)
        self._pending[ref] = n

    def wait(self) -> tuple[int, dict[str, Any]]:
        ray = self._ray
        done, _ = ray.wait(list(self._pending), num_returns=1)
        ref = done[0]
        n = self._pending.pop(ref)
        try:
            return n, ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a worker that died (OOM, killed) fails its trial only
            log.warning("trial %d: Ray task failed: %s", n, exc)
            return n, {"state": "failed", "error": f"Ray task failed: {type(exc).__name__}: {exc}", "seconds": None}


__all__ = ["RayExecutor"]
