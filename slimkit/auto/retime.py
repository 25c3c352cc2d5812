"""Finalists re-timed: feasibility judged on end-to-end latency measured again, never on the in-search number alone.

A trial's in-search speedup is one paired measurement (baseline and artifact alternately, a few rounds) taken
while the machine may be busy; a point a few percent short of ``min_speedup`` can be a feasible one timed
under load, and a point just above it can be the reverse. After the search, every finished trial that meets
every other constraint and whose in-search speedup is at least ``(1 - retime_margin)`` of the limit is a
finalist (the fastest ``retime_max`` of them): its deployed artifact and the fp32 baseline are timed again,
alternately, ``retime_rounds`` rounds (:func:`slimkit.evaluation.latency.paired_latency`), and the re-timed
speedup decides ``min_speedup``, the trial's feasibility and which feasible trial is chosen.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

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


def _measure(out: Path, record: dict[str, Any], base: dict[str, Any], rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(baseline, artifact) latency records of one trial, measured alternately in this process."""
    from slimkit.config.recipe import parse_recipe
    from slimkit.evaluation.latency import ort_latency, paired_latency, torch_latency

    recipe = parse_recipe(base, source="auto-search.yaml base")  # as a trial reads it (data defaults filled)
    lat = recipe.evaluate.latency
    assert lat is not None
    tdir = out / record["dir"]
    if lat.runtime == "onnxruntime":
        from slimkit.data import load_data

        report = json.loads((tdir / "report.json").read_text())
        onnx = next(e for e in report["exports"] if e.get("format") == "onnx")
        xs = load_data(recipe.data).example_inputs
        base_onnx, artifact = tdir / "baseline.onnx", tdir / onnx["artifact"]
        return paired_latency(lambda: ort_latency(base_onnx, xs, lat), lambda: ort_latency(artifact, xs, lat),
                              rounds=rounds)
    from slimkit.pipeline.artifacts import load_saved

    baseline, xs = load_saved(out / "baseline", "baseline")
    final, _ = load_saved(tdir, "final")
    return paired_latency(lambda: torch_latency(baseline.eval(), xs, lat), lambda: torch_latency(final.eval(), xs, lat),
                          rounds=rounds)


def retime(out: Path, records: list[dict[str, Any]], base: dict[str, Any], *, margin: float, most: int,
           rounds: int) -> list[dict[str, Any]]:
    """``records`` with the finalists' ``min_speedup``, ``feasible``, ``violations``, speedup objective and
    latency replaced by the re-timed ones (copies; the others unchanged); each re-timed record gets
    ``retimed: {"baseline_ms", "ms", "speedup", "in_search_speedup", "rounds"}``. A finalist whose files
    cannot be timed keeps its in-search numbers (logged)."""
    from slimkit.pipeline.constraints import speedup

    chosen = {r["number"] for r in finalists(records, margin, most)}
    result = []
    for r in records:
        if r["number"] not in chosen:
            result.append(r)
            continue
        try:
            b_lat, f_lat = _measure(out, r, base, rounds)
        except (OSError, StopIteration, KeyError, SlimkitError) as exc:
            log.warning("trial %s could not be re-timed (%s); its in-search latency stands", r["number"], exc)
            result.append(r)
            continue
        r = copy.deepcopy(r)
        row = _row(r)
        assert row is not None
        s = speedup({"latency_ms": b_lat}, {"latency_ms": f_lat})
        r["retimed"] = {"baseline_ms": b_lat["median"], "ms": f_lat["median"], "speedup": s,
                        "in_search_speedup": row["value"], "rounds": rounds}
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


__all__ = ["best_feasible", "finalists", "retime"]
