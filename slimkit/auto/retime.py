"""Finalists re-timed: feasibility judged on end-to-end latency measured again, never on the in-search number alone.

A trial's in-search speedup is one paired measurement (baseline and artifact alternately, a few rounds) taken
while the machine may be busy; a point a few percent short of ``min_speedup`` can be a feasible one timed
under load, and a point just above it can be the reverse. After the search, every finished trial that meets
every other constraint and whose in-search speedup is at least ``(1 - retime_margin)`` of the limit is a
finalist (the fastest ``retime_max`` of them): its deployed artifact and the fp32 baseline are timed again,
alternately, ``retime_rounds`` rounds (:func:`time_deployed`, i.e. :func:`slimkit.evaluation.latency.ort_compare`
with the search's latency settings; bench/auto.py times its columns the same way), and the re-timed speedup
decides ``min_speedup``, the trial's feasibility and which feasible trial is chosen.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from slimkit.errors import SlimkitError
from slimkit.search.trial import violations

log = logging.getLogger(__name__)

SPEEDUP = "min_speedup"


def _row(record: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in record.get("constraints") or [] if c["name"] == SPEEDUP), None)


def finalists(records: list[dict[str, Any]], margin: float, most: int) -> list[dict[str, Any]]:
    """The finished trials worth re-timing: every constraint but ``min_speedup`` met, in-search speedup at
    least ``(1 - margin)`` of its limit; the ``most`` fastest in-search."""
    out = []
    for r in records:
        row = _row(r)
        if r.get("state") != "complete" or row is None or row["value"] is None:
            continue
        others = [c for c in r["constraints"] if c["name"] != SPEEDUP]
        if all(c["met"] is True for c in others) and float(row["value"]) >= (1 - margin) * float(row["limit"]):
            out.append(r)
    return sorted(out, key=lambda r: -float(_row(r)["value"]))[:most]  # type: ignore[index]


def _recipe(base: dict[str, Any]) -> Any:
    from slimkit.config.recipe import parse_recipe

    recipe = parse_recipe(base, source="auto-search.yaml base")  # as a trial reads it (data defaults filled)
    assert recipe.evaluate.latency is not None
    return recipe


def deployed_timing(base: dict[str, Any]) -> tuple[Any, Any]:
    """(LatencyConfig, example inputs) of an auto run's latency: the search base's ``evaluate.latency`` and
    its data's example inputs, as a trial reads them (data defaults filled)."""
    from slimkit.data import load_data

    recipe = _recipe(base)
    return recipe.evaluate.latency, load_data(recipe.data).example_inputs


def time_deployed(out: Path, files: dict[str, Path], *, rounds: int, base: dict[str, Any] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """ONNX ``files`` of an auto run in ``out`` timed as auto re-times its finalists: the search's latency
    settings and example inputs (:func:`deployed_timing`), interleaved in ``rounds`` rounds
    (:func:`slimkit.evaluation.latency.ort_compare`). bench/auto.py times its rows through this too, so auto's
    verdict and the benchmark's column are one measurement procedure. ``base``: the search base recipe
    (default: read from ``out/auto-search.yaml``)."""
    from slimkit.evaluation.latency import ort_compare

    if base is None:
        base = yaml.safe_load((out / "auto-search.yaml").read_text())["base"]
    lat, xs = deployed_timing(base)
    return ort_compare(files, xs, lat, rounds=rounds)


def deployed_files(out: Path, record: dict[str, Any]) -> dict[str, Path]:
    """``{"fp32": baseline.onnx, "artifact": the trial's deployed ONNX}`` of a finished onnxruntime trial, and
    ``"artifact_fp32"``: the same compressed model's fp32 ONNX, when the artifact is int8 and that file exists."""
    tdir = out / record["dir"]
    report = json.loads((tdir / "report.json").read_text())
    onnx = next(e for e in report["exports"] if e.get("format") == "onnx")
    files = {"fp32": tdir / "baseline.onnx", "artifact": tdir / onnx["artifact"]}
    sibling = (onnx.get("fp32") or {}).get("artifact")
    if sibling and (tdir / sibling).is_file():
        files["artifact_fp32"] = tdir / sibling
    return files


def _measure(out: Path, record: dict[str, Any], base: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """``{"fp32", "artifact"[, "artifact_fp32"]}`` latency records of one trial (baseline, deployed file, and
    for an int8 artifact the same model in fp32), measured alternately in this process."""
    if (base["evaluate"].get("latency") or {}).get("runtime") == "onnxruntime":
        return time_deployed(out, deployed_files(out, record), rounds=rounds, base=base)
    from slimkit.evaluation.latency import paired_latency, torch_latency
    from slimkit.pipeline.artifacts import load_saved

    lat = _recipe(base).evaluate.latency
    baseline, xs = load_saved(out / "baseline", "baseline")
    final, _ = load_saved(out / record["dir"], "final")
    b_lat, f_lat = paired_latency(lambda: torch_latency(baseline.eval(), xs, lat),
                                  lambda: torch_latency(final.eval(), xs, lat), rounds=rounds)
    return {"fp32": b_lat, "artifact": f_lat}


def retime(out: Path, records: list[dict[str, Any]], base: dict[str, Any], *, margin: float, most: int,
           rounds: int) -> list[dict[str, Any]]:
    """``records`` with the finalists' ``min_speedup``, ``feasible``, ``violations``, speedup objective and
    latency replaced by the re-timed ones (copies; the others unchanged); each re-timed record gets
    ``retimed: {"baseline_ms", "ms", "speedup", "in_search_speedup", "rounds"}`` (and ``"fp32_artifact_ms"``, the
    same compressed model's fp32 ONNX timed in the same rounds, for an int8 artifact). A finalist whose files
    cannot be timed keeps its in-search numbers (logged)."""
    from slimkit.pipeline.constraints import speedup

    chosen = {r["number"] for r in finalists(records, margin, most)}
    result = []
    for r in records:
        if r["number"] not in chosen:
            result.append(r)
            continue
        try:
            timed = _measure(out, r, base, rounds)
        except (OSError, StopIteration, KeyError, SlimkitError) as exc:
            log.warning("trial %s could not be re-timed (%s); its in-search latency stands", r["number"], exc)
            result.append(r)
            continue
        r = copy.deepcopy(r)
        row = _row(r)
        assert row is not None
        b_lat, f_lat = timed["fp32"], timed["artifact"]
        s = speedup({"latency_ms": b_lat}, {"latency_ms": f_lat})
        r["retimed"] = {"baseline_ms": b_lat["median"], "ms": f_lat["median"], "speedup": s,
                        "in_search_speedup": row["value"], "rounds": rounds}
        if "artifact_fp32" in timed:  # is int8 faster than the same model in fp32, in this same measurement?
            r["retimed"]["fp32_artifact_ms"] = timed["artifact_fp32"]["median"]
        row.update(value=s, met=s is not None and s >= float(row["limit"]))
        r["violations"] = violations(r["constraints"])
        r["feasible"] = all(c["met"] is True for c in r["constraints"])
        r["metrics"] = {**r["metrics"], "latency_ms": f_lat}
        if r.get("objectives"):  # the primary objective is the speedup when a latency limit is given
            r["objectives"] = [s, *r["objectives"][1:]]
        r["objective"] = s
        result.append(r)
    return result


def best_feasible(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The feasible re-timed trial with the highest re-timed speedup (ties: the earlier)."""
    ok = [r for r in records if r.get("feasible") and r.get("retimed") and r["retimed"]["speedup"] is not None]
    return max(ok, key=lambda r: (r["retimed"]["speedup"], -r["number"])) if ok else None


__all__ = ["best_feasible", "deployed_files", "deployed_timing", "finalists", "retime", "time_deployed"]
