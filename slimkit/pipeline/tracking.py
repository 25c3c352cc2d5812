"""Experiment tracking (MLflow), off unless asked: ``--track mlflow[:URI]`` or a recipe's ``tracking:`` block
(:class:`slimkit.config.tracking.TrackingConfig`).

A finished run is logged from its own files, after report.json is written: the resolved recipe as flattened
parameters (``stages.0.prune.sparsity``), each stage's METRICS with ``step`` = the stage index, the baseline
and final METRICS (``baseline.*``, ``final.*``), the constraints, the verdict as a tag, and as artifacts
``report.json``/``.md``/``.html``, ``recipe.yaml`` and the exported model when it is small enough. A search
(or an auto run) is one parent run with every trial as a nested run. The MLflow run's id and store are written
to ``tracking.json`` in the run directory.

Without a URI the store is local, inside the run directory: ``mlflow.db`` (SQLite; MLflow 3 keeps its plain
file store only behind ``MLFLOW_ALLOW_FILE_STORE``) and ``mlartifacts/``. Read it back with
``mlflow.MlflowClient("sqlite:///RUN_DIR/mlflow.db")`` or ``mlflow ui --backend-store-uri sqlite:///...``.
MLflow is imported only here, only when tracking is asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json
from slimkit.config.tracking import TrackingConfig
from slimkit.errors import DependencyError, TrackingError

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
MAX_KEY_CHARS = 250  # and on a key
MAX_TAG_CHARS = 8000
REPORT_FILES = ("report.json", "report.md", "report.html", "recipe.yaml")
SEARCH_FILES = ("search.json", "search.md", "search.html")


def require_mlflow() -> None:
    """Raise :class:`DependencyError` (before any compute) when tracking is asked for and MLflow is missing."""
    if importlib.util.find_spec("mlflow") is None:
        raise DependencyError("Experiment tracking (--track mlflow, or a recipe's tracking: block) needs MLflow, "
                              "which is not installed.", hint="pip install slimkit[tracking]")


def resolve_tracking(block: TrackingConfig | dict[str, Any] | None, override: Any = None) -> TrackingConfig | None:
    """The tracking a run or search does: ``override`` (False: off; a TrackingConfig) or else the recipe's
    ``tracking:`` block (a TrackingConfig or its resolved mapping). When tracking is on, checks that MLflow is
    installed and that a store given by URI can be reached, so both are found before any compute."""
    if override is False:
        return None
    chosen = override if override is not None else block
    if isinstance(chosen, dict):
        chosen = TrackingConfig.model_validate(chosen)
    if chosen is not None and not isinstance(chosen, TrackingConfig):
        raise TypeError(f"tracking must be a TrackingConfig, False or None, got {type(chosen).__name__}")
    if chosen is not None:
        require_mlflow()
        if chosen.uri is not None:  # a store given by URI is reached (and its experiment made) before any compute
            _Session(chosen, Path.cwd())
    return chosen


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow key: ``stages[0].prune`` -> ``stages.0.prune``; other characters MLflow refuses
    become ``_``; at most 250 characters."""
    name = re.sub(r"\[(\d+)\]", r".\1", name)
    return re.sub(r"[^\w\-. :/]", "_", name)[:MAX_KEY_CHARS]


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow parameters: ``{"stages.0.prune.sparsity": "0.8"}``. Lists of mappings are
    flattened by index; other lists and scalars are one JSON value (``"[8, 16]"``, ``"null"``)."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            out.update(flatten_params(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        text = data if isinstance(data, str) else json.dumps(data, default=str)
        out[mlflow_key(prefix)] = text[:MAX_PARAM_CHARS]
    return out


def metric_values(metrics: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The numbers of a METRICS dict, flattened (``latency_ms.median``, ``fidelity.cosine``); values that were
    not measured (``None``), flags and strings are left out, never invented."""
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(metric_values(v, f"{key}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # v == v: not NaN
            out[mlflow_key(key)] = float(v)
    return out


class _Session:
    """One MLflow client on one store and experiment."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path) -> None:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri, artifact_root = _store(cfg, run_dir)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                try:
                    self.experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=artifact_root)
                except Exception:  # noqa: BLE001 - created meanwhile by a concurrent run: read it back
                    exp = self.client.get_experiment_by_name(cfg.experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; one typed error with the store named
            raise _failed(self.uri, exc) from exc

    def start(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        if parent is not None:
            tags = {**tags, "mlflow.parentRunId": parent}
        return self.client.create_run(self.experiment_id, run_name=name, tags=_tags(tags)).info.run_id

    def log(self, run_id: str, params: dict[str, str], metrics: Iterable[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                              metrics=[Metric(k, v, now, step) for k, v, step in metrics])

    def files(self, run_id: str, base: Path, names: Iterable[str], artifact_path: str | None = None) -> list[str]:
        logged = []
        for name in names:
            path = base / name
            if path.is_file():
                sub = str(Path(name).parent) if Path(name).parent != Path(".") else None
                where = "/".join(p for p in (artifact_path, sub) if p) or None
                self.client.log_artifact(run_id, str(path), artifact_path=where)
                logged.append(name)
        return logged


def _store(cfg: TrackingConfig, run_dir: Path) -> tuple[str, str | None]:
    """The tracking URI and, for a local store, where its artifacts go (beside it, not in the current directory)."""
    if cfg.uri is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}", (run_dir / "mlartifacts").resolve().as_uri()
    if cfg.uri.startswith("sqlite:///"):
        db = Path(cfg.uri.removeprefix("sqlite:///"))
        return cfg.uri, (db.parent / "mlartifacts").resolve().as_uri()
    return cfg.uri, None


def _tags(tags: dict[str, str]) -> dict[str, str]:
    return {k[:MAX_KEY_CHARS]: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()}


def _failed(uri: str, exc: Exception) -> TrackingError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ("For a plain file store set MLFLOW_ALLOW_FILE_STORE=true (MLflow 3 asks for it), or use "
            "sqlite:///PATH/mlflow.db." if "MLFLOW_ALLOW_FILE_STORE" in str(exc)
            else "Check the tracking URI and that the server is reachable; the run's files are unaffected.")
    return TrackingError(f"MLflow tracking to {uri} failed: {text[:500]}", hint=hint)


def _run_metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    rows = [(k, v, st["index"]) for st in report.get("stages", []) for k, v in metric_values(st.get("metrics")).items()]
    rows += [("stage_seconds", float(st["seconds"]), st["index"]) for st in report.get("stages", [])
             if isinstance(st.get("seconds"), (int, float))]
    rows += [(k, v, 0) for k, v in metric_values(report.get("baseline"), "baseline.").items()]
    rows += [(k, v, 0) for k, v in metric_values(report.get("final"), "final.").items()]
    for c in report.get("constraints", []):
        if isinstance(c.get("value"), (int, float)) and not isinstance(c.get("value"), bool):
            rows.append((mlflow_key(f"constraint.{c['name']}"), float(c["value"]), 0))
    return rows


def _run_tags(report: dict[str, Any], run_dir: Path) -> dict[str, str]:
    from slimkit.pipeline.state import recipe_hash

    rows = report.get("constraints", [])
    tags = {"slimkit.run_dir": str(run_dir.resolve()), "slimkit.verdict": report.get("verdict", ""),
            "slimkit.recipe_hash": recipe_hash(report.get("recipe") or {}),
            "slimkit.constraints_met": str(all(r.get("met") is True for r in rows)).lower() if rows else "none",
            "mlflow.note.content": report.get("verdict", "")}
    tags.update({f"constraint.{r['name']}.met": str(r.get("met")).lower() for r in rows})
    delivered = report.get("delivered") or {}
    if delivered:
        tags["slimkit.delivered"] = str(delivered.get("pass", delivered.get("stage")))
    return tags


def _model_files(report: dict[str, Any], run_dir: Path) -> list[str]:
    """The exported model's files (relative to the run directory): every export artifact, its external-data
    file and its manifest."""
    names: list[str] = []

    def walk(entry: Any) -> None:
        if isinstance(entry, dict):
            for k, v in entry.items():
                if k in ("artifact", "manifest") and isinstance(v, str):
                    names.extend([v, f"{v}.data"] if k == "artifact" else [v])
                else:
                    walk(v)

    for e in report.get("exports", []):
        walk(e)
    return [n for n in dict.fromkeys(names) if (run_dir / n).is_file()]


def _log_model(session: _Session, run_id: str, report: dict[str, Any], run_dir: Path) -> None:
    names = _model_files(report, run_dir)
    total = sum((run_dir / n).stat().st_size for n in names)
    if names and total <= session.cfg.max_model_mb * 1e6:
        session.files(run_id, run_dir, names, artifact_path="model")
    elif names:
        session.client.set_tag(run_id, "slimkit.model_not_logged",
                               f"{total / 1e6:.1f} MB > tracking.max_model_mb = {session.cfg.max_model_mb:g}")


def log_run(cfg: TrackingConfig, run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Log the finished run in ``run_dir`` (its ``report``) as one MLflow run named after the recipe; write and
    return ``tracking.json`` ({backend, uri, experiment_id, run_id})."""
    run_dir = Path(run_dir)
    session = _Session(cfg, run_dir)
    try:
        run_id = _log_one(session, run_dir, report, parent=None)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; one typed error with the store named
        raise _failed(session.uri, exc) from exc
    return _write_pointer(run_dir, session, run_id)


def _log_one(session: _Session, run_dir: Path, report: dict[str, Any], parent: str | None) -> str:
    run_id = session.start(report.get("name", run_dir.name), _run_tags(report, run_dir), parent)
    status = "FAILED"
    try:
        session.log(run_id, flatten_params(report.get("recipe") or {}), _run_metrics(report))
        session.files(run_id, run_dir, REPORT_FILES)
        _log_model(session, run_id, report, run_dir)
        status = "FINISHED"
    finally:
        session.client.set_terminated(run_id, status)
    return run_id


def log_search(cfg: TrackingConfig, out: Path, result: dict[str, Any], *, files: Iterable[str] = SEARCH_FILES,
               tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Log a finished search (``result``: the content of search.json) as a parent run with one nested run per
    finished trial (its sampled settings as parameters, its metrics by stage, its report files); ``files``
    (relative to ``out``) are the parent's artifacts. Writes and returns ``out/tracking.json``."""
    out = Path(out)
    session = _Session(cfg, out)
    try:
        parent = session.start(result["name"], {"slimkit.kind": "search", "slimkit.run_dir": str(out.resolve()),
                                                "slimkit.verdict": result.get("verdict", ""),
                                                "mlflow.note.content": result.get("verdict", ""), **(tags or {})})
        status = "FAILED"
        try:
            params = {"objective.metric": result["objective"]["metric"],
                      "objective.direction": result["objective"]["direction"],
                      **flatten_params(result.get("space") or {}, "space"),
                      **flatten_params(result.get("constraints") or {}, "constraints")}
            best = result.get("best") or {}
            metrics = [(k, v, 0) for k, v in metric_values(best.get("metrics"), "best.").items()]
            metrics += [(k, v, 0) for k, v in metric_values(result.get("baseline"), "baseline.").items()]
            metrics += [(f"trials.{k}", float(v), 0) for k, v in (result.get("counts") or {}).items()]
            if best.get("objective") is not None:
                metrics.append(("best.objective", float(best["objective"]), 0))
            session.log(parent, params, metrics)
            session.files(parent, out, files)
            for rec in result.get("trials", []):
                _log_trial(session, out, rec, parent, best.get("number"))
            status = "FINISHED"
        finally:
            session.client.set_terminated(parent, status)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; one typed error with the store named
        raise _failed(session.uri, exc) from exc
    return _write_pointer(out, session, parent)


def _log_trial(session: _Session, out: Path, rec: dict[str, Any], parent: str, best: int | None) -> None:
    """One trial as a nested run: from its report.json when it finished, else its record (state, error)."""
    tdir = out / rec["dir"]
    params = {mlflow_key(f"trial.{k}"): (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_PARAM_CHARS]
              for k, v in (rec.get("params") or {}).items()}
    name = f"trial-{rec['number']}"
    extra = {"slimkit.trial": str(rec["number"]), "slimkit.trial_state": rec["state"],
             "slimkit.feasible": str(bool(rec.get("feasible"))).lower(), "slimkit.best": str(rec["number"] == best).lower()}
    report_file = tdir / "report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        run_id = session.start(name, {**_run_tags(report, tdir), **extra}, parent)
        status = "FAILED"
        try:
            metrics = _run_metrics(report)
            if rec.get("objective") is not None:
                metrics.append(("objective", float(rec["objective"]), 0))
            session.log(run_id, {**flatten_params(report.get("recipe") or {}), **params}, metrics)
            session.files(run_id, tdir, REPORT_FILES)
            status = "FINISHED"
        finally:
            session.client.set_terminated(run_id, status)
        return
    run_id = session.start(name, {**extra, "slimkit.error": rec.get("error") or ""}, parent)
    session.log(run_id, params, [])
    session.client.set_terminated(run_id, "FAILED" if rec["state"] == "failed" else "KILLED")


def _write_pointer(run_dir: Path, session: _Session, run_id: str) -> dict[str, Any]:
    data = {"backend": "mlflow", "uri": session.uri, "experiment": session.cfg.experiment,
            "experiment_id": session.experiment_id, "run_id": run_id}
    atomic_write_json(run_dir / "tracking.json", data)
    log.info("logged to MLflow %s: experiment %s, run %s", session.uri, session.experiment_id, run_id)
    return data


__all__ = ["REPORT_FILES", "SEARCH_FILES", "flatten_params", "log_run", "log_search", "metric_values", "mlflow_key",
           "require_mlflow", "resolve_tracking"]
