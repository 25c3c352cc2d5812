"""slimkit auto on a tiny CNN: validation before compute, the measured profile, the Pareto front, an unmet
constraint (closest point, binding constraint, front still written), the closest recipe re-run with
run_recipe, and --resume redoing no finished trial."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from slimkit.auto import CANDIDATES
from slimkit.auto.front import dominates, pareto_front
from slimkit.config.auto import AutoConfig, parse_duration
from slimkit.errors import RecipeError

SETTINGS = {"runtime": "onnxruntime", "max_latency_ratio": 0.05, "max_accuracy_drop": 0.5, "trials": 2,
            "profile_units": 2, "latency_repeats": 5, "finetune_epochs": 1}


def tiny_recipe() -> dict:
    return {"name": "tiny", "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]}, "train": {"epochs": 4, "lr": 0.01}},
            "data": {"name": "digits", "batch_size": 64}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from slimkit.auto import auto

    out = tmp_path_factory.mktemp("auto") / "a"
    return out, auto(tiny_recipe(), out=out, **SETTINGS)


def test_settings_validated_with_the_recipe_before_compute(tmp_path):
    from slimkit.auto import auto

    bad = {**tiny_recipe(), "auto": {"max_latency_ratoi": 0.5, "max_accuracy_drop": 2}}
    with pytest.raises(RecipeError) as exc:
        auto(bad, out=tmp_path / "x")
    paths = [p for p, _ in exc.value.problems]
    assert "auto.max_latency_ratoi" in paths and "auto.max_accuracy_drop" in paths
    assert "max_latency_ratio" in str(exc.value)  # did you mean
    assert not (tmp_path / "x").exists()


def test_duration_and_constraints():
    assert parse_duration("30m") == 1800 and parse_duration("1.5h") == 5400 and parse_duration(90) == 90
    with pytest.raises(ValueError):
        parse_duration("soon")
    cfg = AutoConfig(max_latency_ratio=0.5, max_accuracy_drop=0.01, min_fidelity=0.99, budget="2m")
    assert cfg.budget_s == 120
    assert cfg.constraints(labelled=True) == {"min_speedup": 2.0, "max_accuracy_drop": 0.01, "min_cosine": 0.99}
    assert "max_accuracy_drop" not in cfg.constraints(labelled=False)


def test_candidates_are_registered_passes():
    from slimkit.registry import kinds

    for c in CANDIDATES:
        assert c.kind == "export" or c.method in kinds()[c.kind], c.name


def test_without_training_the_space_prunes_post_training():
    """No labels (or no recovery epochs): the prune candidate is post-training pruning with reconstruction,
    and the generated config validates as an ordinary search (no compute)."""
    from slimkit.auto.plan import base_recipe, build_space
    from slimkit.config.search import parse_search

    base, cfg = base_recipe(tiny_recipe(), {**SETTINGS, "finetune_epochs": 0})
    profile = {"cost": {"layers": [{"unit": "features.0.0", "share": 0.5}]},
               "sensitivity": {"layers": [{"unit": "features.0.0", "prune_loss": 0.1, "prunable_alone": True}]}}
    config = build_space(base, cfg, profile, labelled=True, name="t")
    assert config["base"]["stages"][0] == {"prune": {"method": "posttrain", "target_macs": 0.6,
                                                     "block_refit": {"steps": 200}}}
    assert "stages[prune].target_macs" in config["space"] and "stages[prune].ratio" not in config["space"]
    assert config["space"]["stages[prune].skip"] == {"choices": [[], ["features.0.0"]]}
    plan = parse_search(config)
    assert {p.path for p in plan.params} >= {"stages", "stages[prune].target_macs", "export.onnx.precision"}
    assert config["space"]["stages[prune].target_macs"] == {"low": 0.3, "high": 0.95}
    assert_initial_inside(config)
    assert [p.get("stages[prune].target_macs") for p in config["initial"]] == [None, 0.92, 0.85]


def assert_initial_inside(config: dict) -> None:
    """Every coarse-start point asks only values the space holds (Optuna warns and samples outside otherwise)."""
    for point in config["initial"]:
        for key, value in point.items():
            dist = config["space"][key]
            if key == "stages":  # a stage list is asked by its label: passes joined by '+', or 'none'
                assert value in {"+".join(c) or "none" for c in dist["choices"]}, (key, value)
            elif "choices" in dist:
                assert value in dist["choices"], (key, value)
            else:
                assert dist["low"] <= value <= dist["high"], (key, value, dist)


def test_recovery_epochs_follow_the_budget_and_the_coarse_start_is_asked_first():
    """Without finetune_epochs, the recovery a trial may search is what fits in a fifth of the budget at the
    measured epoch time (1 to 8 epochs); the coarse start (int8 alone, then pruning at three depths with the
    most recovery) is what the search proposes first, before the sampler (no compute)."""
    from slimkit.auto.candidates import Context, recovery_epochs
    from slimkit.auto.plan import base_recipe, build_space
    from slimkit.search.runner import propose

    settings = {k: v for k, v in SETTINGS.items() if k != "finetune_epochs"} | {"budget": "10m"}
    base, cfg = base_recipe(tiny_recipe(), settings)
    assert cfg.finetune_epochs is None

    def epochs(epoch_s: float | None, labelled: bool = True) -> int:
        return recovery_epochs(Context(cfg, labelled, {"epoch_s": epoch_s}))

    assert [epochs(30.0), epochs(20.0), epochs(1.0), epochs(150.0), epochs(5.0, False)] == [4, 6, 8, 1, 0]
    profile = {"cost": {"layers": []}, "sensitivity": {"layers": []}, "epoch_s": 40.0}
    config = build_space(base, cfg, profile, labelled=True, name="t")
    assert config["base"]["stages"][0]["prune"]["finetune"]["epochs"] == 3
    assert config["space"]["stages[prune].finetune.epochs"] == {"low": 1, "high": 3}
    assert_initial_inside(config)
    first = propose(config, 5)
    assert first[0] == {"stages": "none", "export.onnx.precision": "int8"}
    assert [(p["stages"], p.get("stages[prune].target_macs"), p.get("stages[prune].finetune.epochs"),
             p["export.onnx.precision"]) for p in first[1:4]] == [
        ("prune", 0.35, 3, "int8"), ("prune", 0.5, 3, "int8"), ("prune", 0.65, 3, "int8")]


def test_finalists_are_retimed_and_the_retimed_speedup_judges(finished):
    """Finalists (every other constraint met, in-search speedup within the margin of the limit) are timed again,
    baseline and artifact alternately; the re-timed speedup replaces min_speedup and decides feasibility and
    the chosen trial. The tiny CNN is nowhere near its 20x limit: no finalist at the default margin."""
    import copy

    from slimkit.auto.retime import best_feasible, finalists, retime

    out, result = finished
    records = json.loads((out / "search.json").read_text())["trials"]
    base = yaml.safe_load((out / "auto-search.yaml").read_text())["base"]
    assert finalists(records, 0.25, 6) == [] and result["retimed"] == []
    def row(r: dict, name: str = "min_speedup") -> dict:
        return next(c for c in r["constraints"] if c["name"] == name)

    near = [r for r in records if r["state"] == "complete" and row(r, "max_accuracy_drop")["met"]]
    fastest = max(near, key=lambda r: row(r)["value"])
    again = retime(out, records, base, margin=0.99, most=1, rounds=2)
    timed = [r for r in again if r.get("retimed")]
    assert [r["number"] for r in timed] == [fastest["number"]]
    t = timed[0]
    assert row(t)["value"] == pytest.approx(t["retimed"]["baseline_ms"] / t["retimed"]["ms"])
    assert t["retimed"]["in_search_speedup"] == row(fastest)["value"]
    assert row(t)["met"] is False and t["feasible"] is False and max(t["violations"]) > 0
    assert best_feasible(again) is None
    assert t["metrics"]["latency_ms"]["median"] == t["retimed"]["ms"]
    if (out / t["dir"] / "model.fp32.onnx").is_file():  # an int8 artifact: its fp32 twin timed in the same rounds
        assert t["retimed"]["fp32_artifact_ms"] > 0
    # a limit the re-timed speedup meets: the same trial becomes feasible and is chosen
    lowered = copy.deepcopy(records)
    for r in lowered:
        row(r)["limit"] = 0.01
    again = retime(out, lowered, base, margin=0.25, most=6, rounds=1)
    best = best_feasible(again)
    assert best is not None and best["feasible"] and best["violations"] == [0.0, 0.0]
    assert all(r.get("retimed") for r in again if r["state"] == "complete")


def test_int8_note_says_what_was_measured():
    """The verdict's int8 sentence follows the measurement: int8 faster than the same model's fp32 (re-timing
    preferred over the export's shorter one) says so; not faster says so and names the fp32 file."""
    from slimkit.auto.run import int8_note

    deploy = {"size_bytes": 1000, "int8_vs_fp32": 0.96,
              "retimed": {"ms": 0.10, "fp32_artifact_ms": 0.13, "rounds": 5}}
    assert int8_note(deploy, "trials/3").startswith("int8 is deployed: in the re-timing (5 rounds) it ran 1.30x")
    slow = {**deploy, "retimed": {"ms": 0.10, "fp32_artifact_ms": 0.09, "rounds": 5}}
    note = int8_note(slow, "trials/3")
    assert "0.90x" in note and "not faster" in note and "trials/3/model.fp32.onnx" in note
    export_only = {**deploy, "retimed": None}
    assert "at export (3 rounds) it ran 0.96x" in int8_note(export_only, "trials/3")
    assert "not measured" in int8_note({**export_only, "int8_vs_fp32": None}, "trials/3")


def test_auto_and_its_benchmark_time_the_deployed_file_one_way(finished, monkeypatch):
    """auto's finalist re-timing and bench/auto.py's columns call the same function
    (evaluation.latency.ort_compare) with the same latency settings, example inputs, rounds and files: the
    two can no longer disagree except by noise (no timing: the calls are recorded)."""
    import torch
    from conftest import load_bench

    import slimkit.evaluation.latency as latency
    from slimkit.auto.retime import retime

    out, result = finished
    calls: list[tuple] = []

    def recorded(files, inputs, cfg, *, rounds):
        calls.append((dict(files), inputs, cfg, rounds))
        return {k: {"median": 2.0 if k == "fp32" else 1.0, "p90": 0.0, "batch": cfg.batch, "rounds": [1.0],
                    "cpu_median": 1.0}
                for k in files}

    monkeypatch.setattr(latency, "ort_compare", recorded)
    records = json.loads((out / "search.json").read_text())["trials"]
    base = yaml.safe_load((out / "auto-search.yaml").read_text())["base"]
    chosen = next(r for r in records if r["number"] == result["chosen"]["number"])
    rounds = result["settings"]["retime_rounds"]
    again = retime(out, [chosen], base, margin=0.999, most=1, rounds=rounds)
    assert again[0]["retimed"]["speedup"] == 2.0
    timed = load_bench("auto").retime(out, result)
    assert timed["median"] == {"fp32": 2.0, "auto": 1.0}
    (files_a, xs_a, cfg_a, rounds_a), (files_b, xs_b, cfg_b, rounds_b) = calls
    tdir = out / chosen["dir"]
    assert list(files_a.values())[:2] == list(files_b.values()) == [tdir / "baseline.onnx", tdir / "model.onnx"]
    # auto also times the same compressed model's fp32 file beside an int8 artifact (is int8 faster?)
    assert files_a.get("artifact_fp32", tdir / "model.fp32.onnx") == tdir / "model.fp32.onnx"
    assert cfg_a == cfg_b and cfg_a.runtime == "onnxruntime" and cfg_a.repeats == SETTINGS["latency_repeats"]
    assert rounds_a == rounds_b == rounds
    assert len(xs_a) == len(xs_b) and all(torch.equal(a, b) for a, b in zip(xs_a, xs_b, strict=True))


def test_front_is_non_dominated(finished):
    _, result = finished
    pts, front = result["points"], result["front"]
    assert len(pts) == 2 and front
    numbers = {p["number"] for p in front}
    for p in front:
        assert not any(dominates(q, p) for q in pts)
    for p in pts:
        if p["number"] not in numbers:
            assert any(dominates(q, p) for q in front)
    # the function itself, on numbers where the answer is known
    a = {"number": 0, "quality": 0.9, "latency_ms": 1.0, "bytes": 10}
    b = {"number": 1, "quality": 0.8, "latency_ms": 2.0, "bytes": 10}
    c = {"number": 2, "quality": 0.95, "latency_ms": 3.0, "bytes": 5}
    assert [p["number"] for p in pareto_front([a, b, c])] == [0, 2]


def test_profile_is_measured(finished):
    out, _ = finished
    profile = json.loads((out / "profile.json").read_text())
    layers = profile["cost"]["layers"]
    assert profile["cost"]["runtime"] == "onnxruntime" and profile["cost"]["model_ms"] > 0
    assert layers and all(r["ms"] > 0 and r["share"] > 0 for r in layers)
    assert [r["ms"] for r in layers] == sorted((r["ms"] for r in layers), reverse=True)
    sens = profile["sensitivity"]["layers"]
    assert len(sens) == 2  # profile_units
    for r in sens:
        assert -1 <= r["prune_score"] <= 1 + 1e-6 and r["prune_loss"] == pytest.approx(1 - r["prune_score"])
    assert profile["labelled"] is True
    search_cfg = yaml.safe_load((out / "auto-search.yaml").read_text())
    assert search_cfg["storage"] == "sqlite" and "stages[prune].target_macs" in search_cfg["space"]
    # multi-objective by default: speed first (it picks the chosen point), quality and bytes searched with it
    assert search_cfg["objective"] == "maximize speedup"
    assert search_cfg["objectives"] == ["maximize accuracy", "minimize size_ratio"]
    assert search_cfg["base"]["constraints"] == {"min_speedup": 20.0, "max_accuracy_drop": 0.5}


def test_unmet_constraint_says_which_binds_and_still_writes_the_front(finished):
    out, result = finished
    assert result["feasible"] is False and result["deploy"] is None
    rows = {r["name"]: r for r in result["constraints"]}
    assert rows["min_speedup"]["binds"] and rows["min_speedup"]["slack"] < 0
    assert rows["max_accuracy_drop"]["slack"] > 0 and not rows["max_accuracy_drop"]["binds"]
    assert "NOT MET" in result["verdict"] and "min_speedup violated" in result["verdict"]
    assert (out / "closest.yaml").exists() and not (out / "chosen.yaml").exists()
    # the study's front holds feasible trials only: none here, so the front shown is that of every trial
    assert json.loads((out / "search.json").read_text())["front"] == []
    assert result["front_of"].startswith("every finished trial")
    for p in result["points"]:
        assert len(p["objectives"]) == 3 and p["objectives"][1] == p["quality"]
    html = (out / "auto.html").read_text()
    assert "Pareto front" in html and "data:image/png;base64," in html
    for p in result["points"]:  # every point's latency is a measurement of the deployed ONNX
        trial = json.loads((out / "trials" / str(p["number"]) / "report.json").read_text())
        assert trial["final"]["latency_ms"]["runtime"] == "onnxruntime"
        assert trial["final"]["latency_ms"]["median"] == p["latency_ms"]
        assert trial["final"]["artifact"] == "model.onnx"


def test_closest_recipe_reproduces_with_run_recipe(finished, tmp_path):
    from slimkit import run_recipe

    out, result = finished
    chosen = result["chosen"]
    report = run_recipe(out / chosen["recipe"], out=tmp_path / "again")
    # deterministic metrics agree: the same seed retrains the same baseline and applies the same stages
    assert report["final"]["accuracy"] == pytest.approx(chosen["metrics"]["accuracy"], abs=1 / 400)
    assert report["final"]["params"] == chosen["metrics"]["params"]
    assert report["final"]["size_bytes"] == pytest.approx(chosen["metrics"]["size_bytes"], rel=0.01)


def test_kill_9_then_resume_redoes_no_finished_trial(finished):
    """A third trial is started in another process, which is killed (SIGKILL) while that trial runs; --resume
    then keeps trials 0 and 1 as they were (files untouched), records trial 2 as interrupted and retries its
    settings as trial 3; the profile is not measured again."""
    import signal
    import subprocess
    import sys
    import time

    from slimkit.auto import auto

    out, first = finished
    reports = sorted((out / "trials").glob("*/report.json"))
    stamps = {p: os.stat(p).st_mtime_ns for p in reports}
    profile_stamp = os.stat(out / "profile.json").st_mtime_ns
    before = json.loads((out / "search.json").read_text())["trials"]
    code = ("import json, sys, slimkit; slimkit.auto(json.loads(sys.argv[1]), out=sys.argv[2], resume=True, "
            "**json.loads(sys.argv[3]))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(tiny_recipe()), str(out),
                             json.dumps({**SETTINGS, "trials": 3})], env=env, cwd=root)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            trials = json.loads((out / "search.json").read_text())["trials"]
            if len(trials) == 3 and trials[2]["state"] == "running":
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the third trial finished before it could be killed"
        time.sleep(1.0)  # inside the trial's run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = auto(tiny_recipe(), out=out, resume=True, **{**SETTINGS, "trials": 3})
    data = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in data["trials"]] == ["complete", "complete", "interrupted", "complete"]
    assert data["trials"][3]["params"] == data["trials"][2]["params"]  # the killed trial's settings, retried
    assert data["trials"][:2] == before and len(first["points"]) == 2
    assert {p: os.stat(p).st_mtime_ns for p in reports} == stamps
    assert os.stat(out / "profile.json").st_mtime_ns == profile_stamp
    assert len(result["points"]) == 3


def test_stop_early_skips_the_stages_that_cannot_recover(tmp_path):
    """evaluate.stop_early: a run whose accuracy limit is missed after a stage, with no training stage left,
    stops there (auto's hopeless trials); with a fine-tune stage still to come it does not stop."""
    from slimkit import run_recipe

    r = {**tiny_recipe(), "constraints": {"max_accuracy_drop": 0.0001},
         "evaluate": {"latency": None, "stop_early": True},
         "stages": [{"prune": {"method": "structured", "ratio": 0.8}}, {"lowrank": {"method": "svd", "energy": 0.9}}],
         "export": {"formats": ["safetensors", "onnx"]}}
    report = run_recipe(r, out=tmp_path / "stop")
    assert report["stopped_early"].startswith("after stage 0 (prune:structured): max_accuracy_drop")
    assert len(report["stages"]) == 1 and report["exports"] == [] and not (tmp_path / "stop" / "model.onnx").exists()
    assert report["final"] == report["stages"][0]["metrics"]
    assert [c["met"] for c in report["constraints"]] == [False] and "Stopped early" in report["verdict"]
    r["stages"].insert(1, {"finetune": {"epochs": 1}})
    r["stages"] = r["stages"][:2]
    report = run_recipe(r, out=tmp_path / "go")
    assert "stopped_early" not in report and len(report["stages"]) == 2


def test_cli_validates_before_compute_and_takes_points(tmp_path):
    """`slimkit auto`: a bad setting exits 2 naming it, before any compute; --max-accuracy-drop is in points."""
    import subprocess
    import sys

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe(), "auto": {"runtime": "tensorrt"}}))
    run = subprocess.run([sys.executable, "-m", "slimkit.cli.app", "auto", str(path), "--max-accuracy-drop", "150",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "auto.runtime" in run.stderr and "auto.max_accuracy_drop" in run.stderr  # 150 points = 1.5 > 1
    assert not (tmp_path / "o").exists()


def test_auto_run_logged_to_mlflow_with_nested_trials(finished, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install slimkit[tracking])")
    from mlflow.tracking import MlflowClient

    from slimkit.auto.run import log_auto
    from slimkit.config.tracking import TrackingConfig

    out, result = finished
    search = json.loads((out / "search.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    info = log_auto(TrackingConfig(uri=uri), out, search)
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(info["run_id"])
    assert parent.data.tags["slimkit.kind"] == "auto" and parent.info.run_name == result["name"]
    assert {"auto.json", "auto.html", "profile.json", "search.json"} <= {a.path for a in client.list_artifacts(info["run_id"])}
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['run_id']}'")
    assert sorted(int(c.data.tags["slimkit.trial"]) for c in children) == [t["number"] for t in search["trials"]]
