"""A search's bookkeeping: the trial records, ``search.json`` (rewritten atomically after every change),
the best feasible trial (copied to ``<out>/best/``), the verdict, and resuming from a previous ``search.json``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json
from slimkit.errors import RunError

# a trial in one of these states is not run again on resume; "pruned": stopped early by the runner
# (evaluate.stop_early), its quality already missed after a stage
FINISHED = ("complete", "pruned", "failed")


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link a file (no extra bytes for checkpoints), or copy it where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def best_trial(records: list[dict[str, Any]], direction: str, front: list[int] | None = None) -> dict[str, Any] | None:
    """The feasible finished trial with the best (primary) objective; with ``front`` (a multi-objective
    study's non-dominated feasible trials) one of those, so a tie on the primary objective goes to the trial
    that is not dominated on the others."""
    ok = [r for r in records if r["state"] == "complete" and r.get("feasible") and r.get("objective") is not None
          and (front is None or r["number"] in front)]
    if not ok:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(ok, key=lambda r: (sign * r["objective"], r["number"]))


def _copy_best(out: Path, rec: dict[str, Any]) -> None:
    src = out / rec["dir"]
    tmp = out / ".best-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".lock", ".tmp-*"))
    (tmp / "TRIAL").write_text(f"{rec['number']}\n")
    dst = out / "best"
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def stage_names(data: dict[str, Any]) -> list[str]:
    out = []
    for s in data.get("stages") or []:
        if isinstance(s, dict) and len(s) == 1:
            (kind, body), = s.items()
            out.append(f"{kind}:{(body or {}).get('method', '?')}")
    return out


class Book:
    """search.json and the summaries: rewritten atomically after every change."""

    def __init__(self, plan: Any, out: Path, records: list[dict[str, Any]], baseline: Any) -> None:
        self.plan, self.out, self.records, self.baseline = plan, out, records, baseline
        self.t0 = time.perf_counter()
        self.best_number: int | None = None
        self.front: list[int] | None = None  # a multi-objective study's non-dominated feasible trials
        best_file = out / "best" / "TRIAL"
        if best_file.exists():
            self.best_number = int(best_file.read_text().strip())

    def data(self, *, done: bool = False) -> dict[str, Any]:
        plan = self.plan
        best = best_trial(self.records, plan.direction, self.front)
        counts = {s: sum(r["state"] == s for r in self.records) for s in ("complete", "pruned", "failed", "interrupted", "running")}
        feasible = sum(bool(r.get("feasible")) for r in self.records)
        return {
            "name": plan.config.name, "source": plan.source, "fingerprint": plan.fingerprint(),
            "objective": {"metric": plan.metric, "direction": plan.direction},
            "objectives": [{"metric": m, "direction": d} for m, d in plan.objectives] if plan.multi else None,
            "front": self.front,
            "backend": plan.config.backend, "seed": plan.config.seed, "trials_requested": plan.config.trials,
            "space": {p: s.model_dump(mode="json", exclude_none=True) for p, s in plan.config.space.items()},
            "constraints": {k: v for k, v in plan.base["constraints"].items() if v is not None},
            "shared_baseline": "baseline" if plan.share_baseline else None,
            "baseline": self.baseline,
            "trials": self.records,
            "best": None if best is None else {
                "number": best["number"], "dir": "best", "trial_dir": best["dir"], "objective": best["objective"],
                "params": best["params"], "metrics": best["metrics"], "constraints": best["constraints"]},
            "counts": {**counts, "feasible": feasible},
            "finished": done,
            "verdict": verdict(plan, self.records, best),
        }

    def write(self, *, done: bool = False) -> dict[str, Any]:
        from slimkit.search.summary import write_summary

        data = self.data(done=done)
        best = data["best"]
        if best is not None and best["number"] != self.best_number:
            _copy_best(self.out, next(r for r in self.records if r["number"] == best["number"]))
            self.best_number = best["number"]
        atomic_write_json(self.out / "search.json", data)
        if done:
            write_summary(self.out, data)
        return data


def verdict(plan: Any, records: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    done = [r for r in records if r["state"] in FINISHED]
    feas = [r for r in records if r.get("feasible")]
    words = f"{len(done)} trial(s) run, {len(feas)} met every constraint."
    if best is None:
        if not any(r["state"] == "complete" for r in records):
            return words + " No trial finished; see the errors in search.json."
        return words + (" None met the constraints: widen the space towards milder settings, or relax the "
                        "constraints.")
    return words + (f" Best: trial {best['number']} with {plan.metric} = {best['objective']:.6g} "
                    f"({plan.direction}d); its run is in best/.")


def load_records(plan: Any, out: Path, resume: bool) -> list[dict[str, Any]]:
    path = out / "search.json"
    if not path.exists():
        return []
    if not resume:
        raise RunError(f"{out} already holds a search.", hint="Pass --resume to continue it, or choose another --out.")
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is corrupt ({exc}).", hint="Delete it or choose another --out.") from None
    if old.get("fingerprint") != plan.fingerprint():
        raise RunError(f"cannot resume {out}: the base recipe, space, objective, seed or storage changed.",
                       hint="Search into a new --out directory.")
    records = old.get("trials", [])
    for r in records:
        if r["state"] == "running":  # the process died while it ran: retried as a new trial
            r["state"] = "interrupted"
    return records


__all__ = ["FINISHED", "Book", "best_trial", "link_or_copy", "load_records", "stage_names", "verdict"]
