"""Constraint search: the shipped digits search in a small form, search.json, best, validation, seeding."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimkit.config.search import parse_search
from slimkit.errors import RecipeError, RunError
from slimkit.search import space as sp
from slimkit.search.runner import propose, search

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "recipes" / "search" / "digits.yaml"
SPARSITY = "stages[0].prune.sparsity"
EPOCHS = "stages[0].prune.finetune.epochs"


def small_search(trials: int = 3) -> dict:
    """The shipped search, small: a narrower CNN, fewer epochs, milder sparsities, no ONNX export."""
    cfg = yaml.safe_load(SHIPPED.read_text())
    cfg["trials"] = trials
    base = cfg["base"]
    base["model"]["kwargs"] = {"widths": [16, 32]}
    base["model"]["train"] = {"epochs": 15, "lr": 0.01}
    base["stages"][0]["prune"].update(steps=1, finetune={"epochs": 1, "lr": 0.003})
    base["evaluate"]["latency"] = {"batch": 1, "warmup": 2, "repeats": 5, "threads": 1}
    base["export"] = {"formats": ["safetensors"]}
    cfg["space"] = {SPARSITY: {"low": 0.3, "high": 0.75}, EPOCHS: {"low": 1, "high": 2}}
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "s"
    return out, search(small_search(), out=out)


def test_shipped_search_validates():
    plan = parse_search(yaml.safe_load(SHIPPED.read_text()), source=str(SHIPPED))
    assert plan.config.trials == 4 and plan.metric == "size_bytes" and plan.direction == "minimize"
    assert plan.base["constraints"]["max_accuracy_drop"] == 0.01
    assert {p.path for p in plan.params} == {SPARSITY, EPOCHS}
    assert plan.share_baseline


def test_search_json_lists_every_trial(finished):
    out, result = finished
    data = json.loads((out / "search.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert data["finished"] and len(data["trials"]) == 3
    assert data["objective"] == {"metric": "size_bytes", "direction": "minimize"}
    for i, t in enumerate(data["trials"]):
        assert t["number"] == i and t["state"] == "complete", t.get("error")
        assert set(t["params"]) == {SPARSITY, EPOCHS}
        assert 0.3 <= t["params"][SPARSITY] <= 0.75 and t["params"][EPOCHS] in (1, 2)
        assert t["objective"] == t["metrics"]["size_bytes"]
        assert t["metrics"]["accuracy"] is not None
        assert [c["name"] for c in t["constraints"]] == ["max_accuracy_drop"]
        assert t["feasible"] == all(c["met"] for c in t["constraints"])
        assert t["feasible"] == (t["violations"] == [0.0])
        # the trial is an ordinary run of the proposed recipe
        report = json.loads((out / t["dir"] / "report.json").read_text())
        assert report["final"] == t["metrics"]
        resolved = yaml.safe_load((out / t["dir"] / "recipe.yaml").read_text())
        assert resolved["stages"][0]["prune"]["sparsity"] == pytest.approx(t["params"][SPARSITY])
        assert resolved["stages"][0]["prune"]["finetune"]["epochs"] == t["params"][EPOCHS]
    assert data["counts"]["complete"] == 3


def test_baseline_trained_once_and_shared(finished):
    out, result = finished
    shared = json.loads((out / "baseline" / "report.json").read_text())["baseline"]
    assert result["baseline"] == shared
    for t in result["trials"]:
        report = json.loads((out / t["dir"] / "report.json").read_text())
        assert report["baseline"]["accuracy"] == shared["accuracy"]
        assert report["baseline"]["size_bytes"] == shared["size_bytes"]


def test_best_is_feasible_and_best_among_feasible(finished):
    out, result = finished
    feasible = [t for t in result["trials"] if t["feasible"]]
    assert feasible, "the small search should find a trial within one point (milder sparsities)"
    best = result["best"]
    assert best is not None and best["objective"] == min(t["objective"] for t in feasible)
    assert best["number"] in {t["number"] for t in feasible}
    assert (out / "best" / "TRIAL").read_text().strip() == str(best["number"])
    best_report = json.loads((out / "best" / "report.json").read_text())
    assert best_report["final"] == best["metrics"]
    assert all(c["met"] for c in best_report["constraints"])
    assert (out / "best" / "final" / "model.safetensors").exists()
    html = (out / "search.html").read_text()
    assert "data:image/png;base64," in html and "search.md" not in html
    assert f"| {best['number']} (best) | feasible |" in (out / "search.md").read_text()


def test_same_seed_proposes_same_params(finished):
    _, result = finished
    cfg = small_search()
    first, again = propose(cfg, 4), propose(cfg, 4)
    assert first == again
    # the first proposals (random start-up trials of TPE) are those the search ran
    assert first[:2] == [t["params"] for t in result["trials"][:2]]
    assert propose({**cfg, "seed": 1}, 4) != first


def test_resume_finished_search_and_extend(finished, tmp_path):
    out, result = finished
    with pytest.raises(RunError, match="already holds a search"):
        search(small_search(), out=out)
    again = search(small_search(), out=out, resume=True)
    assert again["trials"] == result["trials"]
    changed = small_search()
    changed["space"][SPARSITY] = {"low": 0.2, "high": 0.75}
    with pytest.raises(RunError, match="changed"):
        search(changed, out=out, resume=True)
    # a larger budget continues where the search stopped (into a copy, to keep the fixture intact)
    import shutil

    copy_dir = tmp_path / "s"
    shutil.copytree(out, copy_dir)
    more = search(small_search(trials=4), out=copy_dir, resume=True)
    assert len(more["trials"]) == 4 and more["trials"][:3] == result["trials"]
    assert more["trials"][3]["state"] == "complete"


def test_interrupted_trial_is_retried(finished, tmp_path):
    out, result = finished
    import shutil

    d = tmp_path / "s"
    shutil.copytree(out, d)
    data = json.loads((d / "search.json").read_text())
    data["trials"][2].update(state="running", metrics=None, objective=None, feasible=False)  # killed mid-trial
    (d / "search.json").write_text(json.dumps(data))
    res = search(small_search(), out=d, resume=True)
    assert [t["state"] for t in res["trials"]] == ["complete", "complete", "interrupted", "complete"]
    assert res["trials"][3]["params"] == result["trials"][2]["params"]


def test_invalid_search_lists_every_problem_and_computes_nothing(tmp_path, monkeypatch):
    import slimkit.pipeline.runner as runner

    def boom(*a, **k):
        raise AssertionError("computed despite an invalid search config")

    monkeypatch.setattr(runner, "run_recipe", boom)
    cfg = small_search()
    cfg["space"] = {SPARSITY: {"low": 0.5, "high": 1.5}, "stages[0].prune.sparsityy": {"low": 0.1, "high": 0.2},
                    "stages[3].prune.sparsity": {"low": 0.1, "high": 0.2}, "stages[0].prune.scope": {"choices": ["layer", "glob"]}}
    out = tmp_path / "never"
    with pytest.raises(RecipeError) as err:
        search(cfg, out=out)
    paths = [p for p, _ in err.value.problems]
    assert "space.stages[0].prune.sparsity.high" in paths
    assert "space.stages[0].prune.sparsityy" in paths  # an unknown key: said once, not per bound
    assert "space.stages[3].prune.sparsity" in paths
    assert "space.stages[0].prune.scope.choices[1]" in paths
    assert not out.exists()

    bad = {**small_search(), "objective": "minimize sise_bytes", "trials": 0, "workers": 2, "backend": "locl",
           "space": {SPARSITY: {"low": 0.9, "high": 0.5}, EPOCHS: {"low": 1}, "x..y": {"low": 1, "high": 2},
                     "stages[0].prune.scope": {"choices": ["glob"]}}}
    with pytest.raises(RecipeError) as err:
        search(bad, out=out)
    msg = str(err.value)
    # config-level problems and the space checked against the base recipe, all in one error
    for path in ("objective.metric", "trials", "backend", f"space.{SPARSITY}", f"space.{EPOCHS}", "space.x..y",
                 "space.stages[0].prune.scope.choices[0]"):
        assert path in msg, (path, msg)
    assert "Did you mean 'size_bytes'" in msg

    base_bad = small_search()
    base_bad["base"]["stages"][0]["prune"]["sparsity"] = 2
    base_bad["base"]["modl"] = {}
    with pytest.raises(RecipeError) as err:
        search(base_bad, out=out)
    assert {"base.stages[0].prune.sparsity", "base.modl"} <= {p for p, _ in err.value.problems}

    with pytest.raises(RecipeError, match="x..y"):
        search({**small_search(), "space": {"x..y": {"low": 1, "high": 2}}}, out=out)
    with pytest.raises(RecipeError, match="constraints are the limits"):
        search({**small_search(), "space": {"constraints.max_accuracy_drop": {"low": 0.01, "high": 0.1}}}, out=out)
    assert not out.exists()


def test_stage_list_choices_and_inactive_params():
    cfg = small_search(trials=8)
    cfg["base"]["stages"].append({"finetune": {"epochs": 1, "lr": 0.001}})
    cfg["space"] = {
        "stages": {"choices": [["prune"], ["prune", "finetune"], ["finetune"]]},
        "stages[prune].sparsity": {"low": 0.3, "high": 0.9},
        "stages[finetune].epochs": {"low": 1, "high": 3},
        "stages[prune].finetune.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    }
    plan = parse_search(cfg)
    seen = set()
    for params in propose(plan, 8):
        choice = params["stages"]
        seen.add(choice)
        assert ("stages[prune].sparsity" in params) == ("prune" in choice)
        assert ("stages[finetune].epochs" in params) == ("finetune" in choice)
        data = sp.apply(plan.params, plan.base, params)
        assert "+".join(next(iter(s)) for s in data["stages"]) == choice
        if "prune" in choice:
            assert data["stages"][0]["prune"]["sparsity"] == params["stages[prune].sparsity"]
            assert 1e-4 <= data["stages"][0]["prune"]["finetune"]["lr"] <= 1e-2
    assert seen <= {"prune", "prune+finetune", "finetune"} and len(seen) >= 2
    with pytest.raises(RecipeError, match="names no stage"):
        parse_search({**cfg, "space": {"stages": {"choices": [["quantize"]]}}})


def test_paths():
    assert sp.parse_path("stages[0].prune.sparsity") == ["stages", 0, "prune", "sparsity"]
    assert sp.parse_path("stages[prune].finetune.lr") == ["stages", ("kind", "prune"), "finetune", "lr"]
    for bad in ("", "a..b", ".a", "a.", "[0]", "a[0]b", "a b"):
        with pytest.raises(sp.PathError):
            sp.parse_path(bad)
    data = {"stages": [{"prune": {"sparsity": 0.5, "finetune": None}}]}
    assert sp.set_path(data, sp.parse_path("stages[0].prune.finetune.epochs"), 2)
    assert data["stages"][0]["prune"]["finetune"] == {"epochs": 2}
    assert not sp.set_path(data, sp.parse_path("stages[0].quantize.bits"), 4)
    assert not sp.set_path(data, sp.parse_path("stages[1].prune.sparsity"), 0.1)
    assert data == {"stages": [{"prune": {"sparsity": 0.5, "finetune": {"epochs": 2}}}]}


def test_api_is_callable_and_light():
    code = ("import sys, slimkit; s = slimkit.search; import slimkit.search.sensitivity; "
            "assert callable(slimkit.search) and slimkit.search is s; "
            "heavy = [m for m in ('optuna', 'ray') if m in sys.modules]; assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli(finished, tmp_path):
    out, result = finished
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text(yaml.safe_dump(small_search()))
    r = subprocess.run([sys.executable, "-m", "slimkit.cli.app", "search", str(cfg_file), "--out", str(out),
                        "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "feasible" in r.stdout and "Best run" in r.stdout
    bad = copy.deepcopy(small_search())
    bad["space"][SPARSITY]["high"] = 1.5
    cfg_file.write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "-m", "slimkit.cli.app", "search", str(cfg_file), "--out",
                        str(tmp_path / "never")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "space.stages[0].prune.sparsity.high" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "never").exists()
    cfg_file.write_text(yaml.safe_dump(small_search()))
    r = subprocess.run([sys.executable, "-m", "slimkit.cli.app", "search", str(cfg_file), "--check", "--out",
                        str(tmp_path / "never")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout and "trial 0:" in r.stdout, r.stderr
    assert not (tmp_path / "never").exists()


def test_sqlite_storage_resumes(tmp_path):
    cfg = small_search(trials=1)
    cfg["storage"] = "sqlite"
    cfg["base"]["model"]["train"] = {"epochs": 2, "lr": 0.01}
    cfg["base"]["constraints"] = {"max_accuracy_drop": 1.0}
    out = tmp_path / "s"
    first = search(cfg, out=out)
    assert (out / "study.db").exists() and len(first["trials"]) == 1
    import optuna

    more = search({**cfg, "trials": 2}, out=out, resume=True)
    assert [t["state"] for t in more["trials"]] == ["complete", "complete"]
    study = optuna.load_study(study_name=cfg["name"], storage=f"sqlite:///{out / 'study.db'}")
    assert [t.params for t in study.trials] == [t["params"] for t in more["trials"]]
    assert all(t.constraints == {"max_accuracy_drop": 0.0} for t in study.trials)
