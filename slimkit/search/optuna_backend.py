"""The Optuna side of a search: a seeded, constraint-aware TPE study that proposes recipes.

With ``objectives`` in the search config the study is multi-objective (``directions=[...]``, TPE's
multi-objective mode); its front is ``Study.best_trials``: the non-dominated trials among the feasible ones.

Trials go through Optuna's ask/tell interface, so the same study drives the local loop and Ray workers
(:mod:`slimkit.search.runner` owns the loop). A trial's constraint results reach the sampler as
violations (<= 0 when met; ``Trial.set_constraint``), so infeasible trials are penalized: TPE models the
feasible region and prefers proposals inside it; the objective alone never makes an infeasible trial best.
Failed trials (a proposed recipe that does not run) are told as FAIL.

Storage: ``memory`` (resume replays the finished trials recorded in ``search.json``) or ``sqlite``
(``<out>/study.db``; resume loads the study, marking trials left running by a killed process as failed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from slimkit.config import search_space as sp
from slimkit.search.records import FINISHED

log = logging.getLogger(__name__)


def _constraints(record: dict[str, Any]) -> dict[str, float]:
    """Optuna's constraint values of a finished trial: one per constraint, <= 0 when met."""
    names = [c["name"] for c in record.get("constraints") or []]
    return dict(zip(names, record.get("violations") or [], strict=False))


def distribution(p: sp.Param) -> BaseDistribution:
    if p.kind == "float":
        return FloatDistribution(float(p.low), float(p.high), log=p.log,  # type: ignore[arg-type]
                                 step=None if p.step is None else float(p.step))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))  # type: ignore[arg-type]
    return CategoricalDistribution(p.labels)


class OptunaStudy:
    """Proposes parameter sets with ``ask()`` and learns from finished trials with ``tell()``."""

    def __init__(self, plan: Any, out: Path | None, records: list[dict[str, Any]]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cfg = plan.config
        self.plan = plan
        # constraint-aware TPE: it reads the values set with Trial.set_constraint (Optuna >= 5)
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.n_startup)
        storage = None
        if cfg.storage == "sqlite" and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{(out / 'study.db').resolve()}"
        # several objectives: one multi-objective study (TPE's multi-objective mode reads the same constraints)
        self.multi = plan.multi
        self.study = optuna.create_study(directions=[d for _, d in plan.objectives], sampler=sampler,
                                         storage=storage, study_name=cfg.name, load_if_exists=True)
        self._dists = {p.path: distribution(p) for p in plan.params}
        fresh = not self.study.get_trials(deepcopy=False)
        if storage is not None:  # trials left running by a killed process; WAITING ones (enqueued) stay queued
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                self.study.tell(t.number, state=TrialState.FAIL)
        elif records:
            for r in records:
                if r["state"] in FINISHED:
                    self.study.add_trial(self._frozen(r))
                    r["study_trial"] = len(self.study.get_trials(deepcopy=False)) - 1
        # the coarse start: queued once in a new study (a stored study keeps the rest queued across a kill);
        # replayed in memory, the points not asked yet
        for point in cfg.initial if fresh else [] if storage is not None else cfg.initial[len(records):]:
            self.study.enqueue_trial(self._labels(point), user_attrs={"proposed_by": "initial"}, skip_if_exists=False)
        for r in records:
            if r["state"] == "interrupted" and not r.get("retry_enqueued"):
                self.study.enqueue_trial(r["params"], skip_if_exists=False)
                r["retry_enqueued"] = True

    def _labels(self, point: dict[str, Any]) -> dict[str, Any]:
        """An initial point as Optuna's parameter values (a categorical value given as a value -> its label)."""
        out = {}
        for p in self.plan.params:
            if p.path in point:
                v = point[p.path]
                out[p.path] = p.labels[p.values.index(v)] if p.kind == "categorical" and v not in p.labels else v
        return out

    def _frozen(self, r: dict[str, Any]) -> optuna.trial.FrozenTrial:
        params = {k: v for k, v in r["params"].items() if k in self._dists}
        dists = {k: self._dists[k] for k in params}
        complete = r["state"] == "complete" and self._values(r) is not None
        return optuna.trial.create_trial(
            state=TrialState.COMPLETE if complete else TrialState.PRUNED if r["state"] == "pruned" else TrialState.FAIL,
            values=self._values(r) if complete else None, params=params, distributions=dists,
            constraints=_constraints(r) if complete else None)

    def _values(self, r: dict[str, Any]) -> list[float] | None:
        """The objective value(s) Optuna is told for a record (None: not measured)."""
        values = r.get("objectives") if self.multi else [r.get("objective")]
        return None if not values or any(v is None for v in values) else [float(v) for v in values]

    def refine(self, records: list[dict[str, Any]]) -> int | None:
        """With nothing queued and no feasible trial, queue the next point along a ``refine`` knob
        (:func:`slimkit.search.refine.next_point`); returns the trial number it starts from, or None."""
        from slimkit.search.refine import next_point

        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        params = {p.path: p for p in self.plan.params}
        for spec in self.plan.config.refine:
            if sum(r.get("refine") == spec.param for r in records) >= spec.max_steps:
                continue
            p = params[spec.param]
            assert p.low is not None and p.high is not None  # SearchConfig: a numeric path of the space
            got = next_point(records, param=spec.param, faster=spec.faster, helps=spec.helps, low=float(p.low),
                             high=float(p.high), integer=p.kind == "int", margin=spec.margin)
            if got is not None:
                point, start = got
                self.study.enqueue_trial({k: v for k, v in point.items() if k in self._dists},
                                         user_attrs={"proposed_by": "refine", "refine": spec.param,
                                                     "refined_from": start}, skip_if_exists=False)
                log.info("refine: %s=%s from trial %d", spec.param, point[spec.param], start)
                return start
        return None

    def ask(self) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any]]:
        """A new trial: (handle, proposed recipe dict, {path: sampled value})."""
        trial = self.study.ask()
        data, sampled = sp.suggest(trial, self.plan.params, self.plan.base)
        return trial, data, sampled

    def tell(self, trial: optuna.trial.Trial, record: dict[str, Any]) -> None:
        values = self._values(record)
        if record["state"] == "complete" and values is not None:
            for name, value in _constraints(record).items():
                trial.set_constraint(name, value)
            self.study.tell(trial, values)
        elif record["state"] == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def front(self, records: list[dict[str, Any]]) -> list[int] | None:
        """A multi-objective study's front: the record numbers of its non-dominated feasible trials
        (``Study.best_trials``, which leaves out trials whose constraints are violated), in record order;
        None for a single-objective study."""
        if not self.multi:
            return None
        numbers = {t.number for t in self.study.best_trials}
        return [r["number"] for r in records if r.get("study_trial") in numbers and r["state"] == "complete"]


__all__ = ["OptunaStudy", "distribution"]
