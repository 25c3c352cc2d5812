"""Refinement along a knob (slimkit.search.refine): the secant step toward the binding limit, its guards, and
the search loop queueing it when nothing is feasible (trials replaced by a synthetic model: no compute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimkit.errors import RecipeError
from slimkit.search import runner
from slimkit.search.refine import next_point

KNOB = "stages[0].prune.sparsity"


def record(n: int, x: float, speedup: float, drop: float, *, other: int = 1, limit_speed: float = 2.0,
           limit_drop: float = 0.01) -> dict:
    rows = [{"name": "min_speedup", "limit": limit_speed, "value": speedup, "met": speedup >= limit_speed},
            {"name": "max_accuracy_drop", "limit": limit_drop, "value": drop, "met": drop <= limit_drop}]
    return {"number": n, "state": "complete", "params": {KNOB: x, "epochs": other}, "constraints": rows,
            "feasible": all(r["met"] for r in rows)}


def step(records, faster="high", **kw):
    return next_point(records, param=KNOB, faster=faster, helps=["min_speedup"], low=0.1, high=0.9, **kw)


def test_secant_through_the_closest_trial_and_its_neighbour():
    # auto's MobileNetV2 case in knob form: the fastest coarse point 1% short, accuracy to spare
    recs = [record(0, 0.65, 1.978, -0.05), record(1, 0.5, 1.67, -0.05), record(2, 0.35, 1.47, -0.06),
            record(3, 0.6, 1.9, -0.05, other=2)]
    point, start = step(recs)
    assert start == 0
    # the line through (0.65, 1.978) and (0.5, 1.67) reaches 2.0 * 1.1 = 2.2 at x = 0.65 + 0.222 / 2.0533
    assert point[KNOB] == pytest.approx(0.65 + (2.2 - 1.978) * (0.5 - 0.65) / (1.67 - 1.978), abs=1e-6)
    assert point["epochs"] == 1  # the other settings of the closest trial, not of trial 3


def test_a_trial_that_passes_by_less_than_half_the_margin_is_stepped_past_it():
    # the second MobileNetV2 run: 2.08x in the search, 1.98x when re-timed; nothing else feasible
    recs = [record(0, 0.65, 2.08, -0.05), record(1, 0.5, 1.75, -0.05)]
    assert recs[0]["feasible"]
    point, start = step(recs)
    assert start == 0 and point[KNOB] == pytest.approx(0.65 + (2.2 - 2.08) * 0.15 / (2.08 - 1.75), abs=1e-6)
    assert step([record(0, 0.65, 2.12, -0.05), record(1, 0.5, 1.75, -0.05)]) is None  # 6% inside: enough
    assert step(recs, margin=0.05) is None  # 4% inside half of a 5% margin


def test_too_inaccurate_moves_the_other_way_and_fixed_step_without_neighbour():
    recs = [record(0, 0.6, 2.5, 0.03)]
    point, start = step(recs)
    assert start == 0 and point[KNOB] == pytest.approx(0.6 - 0.1 * 0.8)  # toward the slow end, a fixed step
    point, _ = step([record(0, 0.3, 1.5, -0.01)])
    assert point[KNOB] == pytest.approx(0.3 + 0.08)


def test_no_step_when_feasible_both_missed_tried_or_at_the_bound():
    assert step([record(0, 0.5, 2.5, 0.0), record(1, 0.3, 1.5, 0.0)]) is None  # a feasible trial exists
    assert step([record(0, 0.5, 1.5, 0.05)]) is None  # both kinds missed: the sampler goes on alone
    assert step([record(0, 0.9, 1.5, 0.0)]) is None  # at the fast end already: nothing left to try
    # a line pointing the wrong way (noise) falls back to the fixed step toward the fast end
    point, _ = step([record(0, 0.5, 1.5, 0.0), record(1, 0.4, 1.6, 0.0)])
    assert point[KNOB] == pytest.approx(0.4 + 0.08)  # from the closest (trial 1)
    # the jump is capped at half the range, and integers stay integers
    point, _ = step([record(0, 0.2, 1.0, 0.0), record(1, 0.15, 0.99, 0.0)])
    assert point[KNOB] == pytest.approx(0.2 + 0.4)
    got = next_point([record(0, 4, 1.5, 0.0)], param=KNOB, faster="low", helps=["min_speedup"], low=1, high=9,
                     integer=True)
    assert got is not None and got[0][KNOB] == 3 and isinstance(got[0][KNOB], int)


def synthetic_search(refine: bool) -> dict:
    space = {KNOB: {"low": 0.1, "high": 0.9}}
    return {"name": "refine-test", "trials": 4, "seed": 0, "share_baseline": False,
            "base": {"name": "r", "model": {"arch": "mlp", "train": {"epochs": 1}}, "data": {"name": "digits"},
                     "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}],
                     "constraints": {"min_speedup": 2.0, "max_accuracy_drop": 0.01}},
            "space": space, "objective": "maximize speedup", "initial": [{KNOB: 0.2}, {KNOB: 0.35}],
            "refine": [{"param": KNOB, "faster": "high", "helps": ["min_speedup"]}] if refine else []}


def fake_trial(recipe_data, trial_dir, **kw):
    """A trial as a synthetic model: speedup 1 / (1 - x), accuracy lost beyond x = 0.7."""
    x = recipe_data["stages"][0]["prune"]["sparsity"]
    Path(trial_dir).mkdir(parents=True)  # the search copies the best trial's directory
    speedup, drop = 1 / (1 - x), max(0.0, (x - 0.7) * 0.5)
    rows = record(0, x, speedup, drop)["constraints"]
    return {"state": "complete", "metrics": {"speedup": speedup}, "constraints": rows,
            "feasible": all(r["met"] for r in rows), "violations": [0.0 if r["met"] else 1.0 for r in rows],
            "objective": speedup, "verdict": "", "seconds": 0.0, "error": None}


def test_the_search_queues_the_step_when_nothing_is_feasible(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_trial", fake_trial)
    result = runner.search(synthetic_search(refine=True), out=tmp_path / "s")
    trials = result["trials"]
    assert [t.get("proposed_by") for t in trials[:2]] == ["initial", "initial"]
    third = trials[2]
    assert third["proposed_by"] == "refine" and third["refined_from"] == 1 and third["refine"] == KNOB
    # the line through (0.35, 1.538) and (0.2, 1.25) reaches 2.2 at 0.35 + 0.662 * 0.15 / 0.288
    assert third["params"][KNOB] == pytest.approx(0.35 + (2.2 - 1 / 0.65) * 0.15 / (1 / 0.65 - 1.25), abs=1e-5)
    assert third["feasible"] and result["best"]["number"] == 2
    assert "refined from 1" in (tmp_path / "s" / "search.md").read_text()
    # once a trial is feasible the sampler alone proposes the rest
    assert trials[3].get("proposed_by") is None
    assert json.loads((tmp_path / "s" / "search.json").read_text())["trials"][2]["proposed_by"] == "refine"


def test_refine_must_name_a_numeric_path_of_the_space():
    cfg = synthetic_search(refine=True)
    cfg["refine"][0]["param"] = "stages[0].prune.steps"
    with pytest.raises(RecipeError, match="refine names"):
        runner.coerce_plan(cfg)
