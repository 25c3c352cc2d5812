"""Multi-objective search (``objectives:``): one Optuna study over several objectives with the constraints
given to the sampler, SQLite storage; the front is the study's non-dominated feasible trials, the best is the
feasible trial with the best primary objective; resume redoes nothing finished."""

from __future__ import annotations

import json
import os

import optuna
import pytest

from slimkit.config.search import parse_search
from slimkit.errors import RecipeError
from slimkit.search.runner import search
from tests.test_search import SPARSITY, small_search


def multi_search(trials: int = 5) -> dict:
    cfg = small_search(trials)
    cfg["name"] = "multi"
    cfg["objectives"] = ["maximize accuracy"]
    cfg["storage"] = "sqlite"
    cfg["startup_trials"] = 3
    cfg["space"] = {SPARSITY: {"low": 0.3, "high": 0.97}}  # the high end cannot stay within one point
    return cfg


def dominated(a: list[float], b: list[float]) -> bool:
    """b dominates a on (minimize size, maximize accuracy)."""
    return b[0] <= a[0] and b[1] >= a[1] and (b[0] < a[0] or b[1] > a[1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "m"
    return out, search(multi_search(), out=out)


def test_objectives_validated():
    plan = parse_search(multi_search())
    assert plan.multi and plan.objectives == [("size_bytes", "minimize"), ("accuracy", "maximize")]
    with pytest.raises(RecipeError, match="each objective metric once"):
        parse_search({**multi_search(), "objectives": ["size_bytes"]})
    with pytest.raises(RecipeError, match=r"objectives\[0\]\.metric: unknown metric .acuracy"):
        parse_search({**multi_search(), "objectives": ["maximize acuracy"]})
    # single-objective searches keep their fingerprint (resume of older search.json files)
    single = small_search()
    assert parse_search(single).fingerprint() == parse_search({**single, "objectives": []}).fingerprint()


def test_front_is_the_studys_non_dominated_feasible_trials(finished):
    out, result = finished
    assert result["objectives"] == [{"metric": "size_bytes", "direction": "minimize"},
                                    {"metric": "accuracy", "direction": "maximize"}]
    done = [t for t in result["trials"] if t["state"] == "complete"]
    assert len(done) == 5, [t.get("error") for t in result["trials"]]
    for t in done:
        assert t["objectives"] == [t["metrics"]["size_bytes"], t["metrics"]["accuracy"]]
    feasible = [t for t in done if t["feasible"]]
    assert feasible and len(feasible) < len(done), "the space should give feasible and infeasible trials"
    front = [t for t in done if t["number"] in result["front"]]
    assert front and all(t["feasible"] for t in front)
    for t in front:  # nothing feasible dominates a front member
        assert not any(dominated(t["objectives"], q["objectives"]) for q in feasible)
    for t in feasible:  # every feasible trial off the front is dominated by one on it
        if t["number"] not in result["front"]:
            assert any(dominated(t["objectives"], q["objectives"]) for q in front)
    # the same front read back from the SQLite study
    study = optuna.load_study(study_name="multi", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.directions) == 2
    by_study = {t.number for t in study.best_trials}
    assert sorted(r["number"] for r in done if r["study_trial"] in by_study) == sorted(result["front"])
    assert all(t.constraints and max(t.constraints.values()) <= 0 for t in study.best_trials)  # told to the sampler


def test_best_is_the_best_primary_objective_among_feasible(finished):
    out, result = finished
    feasible = [t for t in result["trials"] if t["state"] == "complete" and t["feasible"]]
    best = result["best"]
    assert best["objective"] == min(t["objective"] for t in feasible)
    assert best["number"] in result["front"]
    assert all(c["met"] for c in best["constraints"])
    assert (out / "best" / "TRIAL").read_text().strip() == str(best["number"])


def test_resume_redoes_nothing_finished(finished):
    out, result = finished
    reports = sorted((out / "trials").glob("*/report.json"))
    stamps = {p: os.stat(p).st_mtime_ns for p in reports}
    again = search(multi_search(), out=out, resume=True)
    assert again["trials"] == result["trials"] and again["front"] == result["front"]
    more = search(multi_search(6), out=out, resume=True)
    assert more["trials"][:5] == result["trials"] and len(more["trials"]) == 6
    assert {p: os.stat(p).st_mtime_ns for p in reports} == stamps
    study = optuna.load_study(study_name="multi", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 6
    data = json.loads((out / "search.json").read_text())
    assert data["front"] == more["front"] and all(t["feasible"] for t in data["trials"] if t["number"] in data["front"])
