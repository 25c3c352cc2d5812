"""Experiment tracking (MLflow): a tracked run and a tracked search read back through MLflow's client from
the local store in the run directory, with values; off unless asked; typed errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from slimkit.config.recipe import parse_recipe
from slimkit.config.tracking import TrackingConfig, parse_track
from slimkit.errors import DependencyError, RecipeError, TrackingError
from slimkit.pipeline.runner import run_recipe
from slimkit.pipeline.state import recipe_hash
from slimkit.pipeline.tracking import flatten_params, log_run, metric_values, mlflow_key

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install slimkit[tracking])")


def tiny_recipe(name: str = "trk", **over) -> dict:
    r = {"name": name, "seed": 1,
         "model": {"arch": "cnn-small", "kwargs": {"widths": [4, 8]}, "train": {"epochs": 1, "lr": 0.01}},
         "data": {"name": "digits", "batch_size": 128, "test_limit": 200},
         "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}},
                    {"prune": {"method": "magnitude", "sparsity": 0.75}}],
         "evaluate": {"latency": None},
         "constraints": {"min_sparsity": 0.7}}
    r.update(over)
    return r


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("track") / "run"
    report = run_recipe(tiny_recipe(tracking={"experiment": "slimkit-test"}), out=out)
    return out, report


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    info = json.loads((out / "tracking.json").read_text())
    assert info["uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"  # the local store is in the run directory
    return MlflowClient(tracking_uri=info["uri"]), info


def test_run_params_metrics_and_artifacts_read_back(tracked, tmp_path):
    out, report = tracked
    client, info = _client(out)
    run = client.get_run(info["run_id"])
    assert run.info.run_name == "trk" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "slimkit-test"
    p = run.data.params
    assert p["model.arch"] == "cnn-small" and p["model.kwargs.widths"] == "[4, 8]"
    assert p["stages.0.prune.sparsity"] == "0.5" and p["stages.1.prune.sparsity"] == "0.75"
    assert p["data.test_limit"] == "200" and p["evaluate.latency"] == "null"
    # per-stage metrics, step = stage index, the values of report.json
    for key in ("accuracy", "sparsity", "nonzero_params", "size_bytes"):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert hist == [(st["index"], pytest.approx(float(st["metrics"][key]))) for st in report["stages"]]
    sparsity = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "sparsity"), key=lambda m: m.step)]
    assert sparsity[0] == pytest.approx(0.5, abs=0.02) and sparsity[1] == pytest.approx(0.75, abs=0.02)
    m = run.data.metrics
    assert m["baseline.accuracy"] == pytest.approx(report["baseline"]["accuracy"])
    assert m["final.accuracy"] == pytest.approx(report["final"]["accuracy"])
    assert m["constraint.min_sparsity"] == pytest.approx(report["constraints"][0]["value"])
    assert "final.latency_ms.median" not in m  # not measured: not logged, never invented
    assert run.data.tags["constraint.min_sparsity.met"] == str(report["constraints"][0]["met"]).lower()
    assert run.data.tags["slimkit.verdict"] == report["verdict"]
    # artifacts: the report files, the recipe and the (small) exported model, byte for byte
    names = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "report.html", "recipe.yaml", "model"} <= set(names)
    model = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/final" in model  # the files keep their place in the run directory
    model = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "model/final")}
    assert model["model/final/model.safetensors"] == (out / "final" / "model.safetensors").stat().st_size
    assert "model/final/manifest.json" in model
    got = client.download_artifacts(run.info.run_id, "report.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == json.loads((out / "report.json").read_text())
    assert (out / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # artifacts beside the store


def test_model_left_out_when_too_large_and_store_given_by_uri(tracked, tmp_path):
    out, report = tracked
    uri = f"sqlite:///{out / 'mlflow.db'}"  # the same store by URI (a new SQLite store costs seconds of set-up)
    info = log_run(TrackingConfig(uri=uri, experiment="by-uri", max_model_mb=0.0001), out, report)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(info["run_id"])
    exp = client.get_experiment(run.info.experiment_id)
    assert info["uri"] == uri and exp.name == "by-uri" and exp.experiment_id == info["experiment_id"]
    assert exp.artifact_location.startswith((out / "mlartifacts").resolve().as_uri())  # beside the store
    assert "model" not in {a.path for a in client.list_artifacts(info["run_id"])}
    assert "MB > tracking.max_model_mb" in run.data.tags["slimkit.model_not_logged"]


def test_search_trials_are_nested_runs(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    from slimkit.search.runner import search

    out, _ = tracked
    uri = f"sqlite:///{out / 'mlflow.db'}"
    base = tiny_recipe("trk-search", stages=[{"prune": {"method": "magnitude", "sparsity": 0.5}}],
                       constraints={"min_sparsity": 0.55})
    cfg = {"name": "trk-search", "base": base, "trials": 2, "objective": "minimize size_bytes",
           "space": {"stages[0].prune.sparsity": {"choices": [0.4, 0.6]}}}
    result = search(cfg, out=tmp_path / "s", tracking=TrackingConfig(uri=uri, experiment="search"))
    client = MlflowClient(tracking_uri=uri)
    info = json.loads((tmp_path / "s" / "tracking.json").read_text())
    parent = client.get_run(info["run_id"])
    assert parent.info.run_name == "trk-search" and parent.data.params["objective.metric"] == "size_bytes"
    assert parent.data.metrics["trials.complete"] == 2
    assert {"search.json", "search.md", "search.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_trial = {int(c.data.tags["slimkit.trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1] and not (tmp_path / "s" / "trials" / "0" / "tracking.json").exists()
    for rec in result["trials"]:
        child = by_trial[rec["number"]]
        assert child.info.run_name == f"trial-{rec['number']}"
        assert float(child.data.params["trial.stages.0.prune.sparsity"]) == rec["params"]["stages[0].prune.sparsity"]
        assert child.data.params["stages.0.prune.sparsity"] == str(rec["params"]["stages[0].prune.sparsity"])
        assert child.data.metrics["final.size_bytes"] == rec["metrics"]["size_bytes"]
        assert child.data.metrics["sparsity"] == pytest.approx(rec["metrics"]["sparsity"])  # stage 0, step 0
        assert child.data.tags["slimkit.feasible"] == str(rec["feasible"]).lower()
        assert ("best" in result and result["best"] is not None and result["best"]["number"] == rec["number"]) \
            == (child.data.tags["slimkit.best"] == "true")


def test_unreachable_server_is_a_typed_error_before_any_compute(tracked, monkeypatch, tmp_path):
    out, report = tracked
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = TrackingConfig(uri="http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="http://127.0.0.1:9") as exc:
        log_run(cfg, out, report)
    assert "reachable" in str(exc.value)
    with pytest.raises(TrackingError):
        run_recipe(tiny_recipe(), out=tmp_path / "r", tracking=cfg)
    assert not (tmp_path / "r").exists()


def test_off_unless_asked_and_mlflow_missing_is_typed(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(DependencyError, match=r"pip install slimkit\[tracking\]"):
        run_recipe(tiny_recipe(tracking={}), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # found before any compute
    with pytest.raises(DependencyError):  # --track on a recipe without a tracking block
        run_recipe(tiny_recipe(), out=tmp_path / "r2", tracking=TrackingConfig())
    assert not (tmp_path / "r2").exists()


def test_tracking_config_validation_and_hash():
    assert parse_track("mlflow") == TrackingConfig()
    assert parse_track("mlflow:http://host:5000").uri == "http://host:5000"
    assert parse_track("mlflow:sqlite:///x/mlflow.db").uri == "sqlite:///x/mlflow.db"
    for bad in ("wandb", "mlflow:", "mlflow:ftp://x"):
        with pytest.raises(RecipeError, match="--track"):
            parse_track(bad)
    with pytest.raises(RecipeError) as exc:
        parse_recipe(tiny_recipe(tracking={"backend": "wandb", "uri": "gopher://x", "max_model_mb": -1}))
    paths = {p for p, _ in exc.value.problems}
    assert {"tracking.backend", "tracking.uri", "tracking.max_model_mb"} <= paths
    plain, tracked = parse_recipe(tiny_recipe()), parse_recipe(tiny_recipe(tracking={"uri": "http://h:5000"}))
    assert "tracking" not in plain.resolved()  # absent unless given
    assert recipe_hash(plain.resolved()) == recipe_hash(tracked.resolved())  # tracking changes no result


def test_flattening():
    assert mlflow_key("space.stages[0].prune.sparsity") == "space.stages.0.prune.sparsity"
    assert mlflow_key("a=b[x]") == "a_b_x_"
    assert flatten_params({"a": {"b": 1, "c": [1, 2]}, "s": [{"prune": {"x": None}}], "e": {}}) == {
        "a.b": "1", "a.c": "[1, 2]", "s.0.prune.x": "null", "e": "{}"}
    assert metric_values({"accuracy": 0.5, "latency_ms": {"median": 2.0, "batch": 1}, "f1": None,
                          "artifact": "final/model.safetensors", "flag": True}) == {
        "accuracy": 0.5, "latency_ms.median": 2.0, "latency_ms.batch": 1.0}
