"""The techniques auto may chain, as a table keyed by registered pass kind/method (and the export precision).

Each :class:`Candidate` says where it sits in a valid order (structural changes, then recovery, then
precision, then export), when it applies (labels, runtime, the pass being registered), the stage it adds to
the base recipe and the settings of that stage the search explores, addressed as ordinary search paths
(``stages[prune].ratio``). A new technique (e.g. post-training pruning with calibration reconstruction) plugs
in as one more row: its pass registered in :mod:`slimkit.registry`, its stage and its space here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STRUCTURAL, PRECISION, EXPORT = 0, 2, 3


@dataclass(frozen=True)
class Context:
    """What a candidate may look at: the settings, whether data has labels, the measured profile."""

    cfg: Any  # AutoConfig
    labelled: bool
    profile: dict[str, Any]


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str          # a registered pass kind, or "export"
    method: str        # a registered method of that kind, or the export precision
    order: int
    applies: Callable[[Context], bool]
    stage: Callable[[Context], dict[str, Any] | None]   # the stage mapping (None: export-only candidate)
    space: Callable[[Context], dict[str, dict[str, Any]]]


def sensitive_units(profile: dict[str, Any], fraction: float = 0.25) -> list[str]:
    """The layers to shield from pruning: the most sensitive quarter of those that prune alone, ranked by
    fidelity lost per unit of measured latency share (a layer that costs little time and loses much is
    shielded first)."""
    share = {r["unit"]: r["share"] or 0.0 for r in profile["cost"]["layers"]}
    rows = [r for r in profile["sensitivity"]["layers"] if r["prunable_alone"] and r["prune_loss"] > 0]
    rows.sort(key=lambda r: -r["prune_loss"] / max(share.get(r["unit"], 0.0), 1e-3))
    return [r["unit"] for r in rows[:max(1, math.ceil(fraction * len(rows)))]] if rows else []


def _prune_stage(c: Context) -> dict[str, Any]:
    body: dict[str, Any] = {"method": "structured", "ratio": 0.3, "importance": "l2"}
    if c.labelled and c.cfg.finetune_epochs > 0:
        body["finetune"] = {"epochs": 1}
    return {"prune": body}


def _prune_space(c: Context) -> dict[str, dict[str, Any]]:
    space: dict[str, dict[str, Any]] = {"stages[prune].ratio": {"low": 0.1, "high": 0.7}}
    shield = sensitive_units(c.profile)
    if shield:
        space["stages[prune].skip"] = {"choices": [[], shield]}
    if c.labelled and c.cfg.finetune_epochs > 1:
        space["stages[prune].finetune.epochs"] = {"low": 1, "high": c.cfg.finetune_epochs}
    return space


def _posttrain_stage(c: Context) -> dict[str, Any]:
    return {"prune": {"method": "posttrain", "target_macs": 0.6}}


def _posttrain_space(c: Context) -> dict[str, dict[str, Any]]:
    space: dict[str, dict[str, Any]] = {"stages[prune].target_macs": {"low": 0.3, "high": 0.9}}
    shield = sensitive_units(c.profile)
    if shield:
        space["stages[prune].skip"] = {"choices": [[], shield]}
    return space


def _trains(c: Context) -> bool:
    """Recovery by fine-tuning is possible: labels, and epochs allowed."""
    return c.labelled and c.cfg.finetune_epochs > 0


def _lowrank_stage(c: Context) -> dict[str, Any]:
    return {"lowrank": {"method": "svd", "energy": 0.95}}


def _lowrank_space(c: Context) -> dict[str, dict[str, Any]]:
    return {"stages[lowrank].energy": {"low": 0.8, "high": 0.995}}


CANDIDATES: list[Candidate] = [
    Candidate("structured-prune", "prune", "structured", STRUCTURAL, _trains, _prune_stage, _prune_space),
    # without labels or training time: post-training pruning that refits from calibration data instead
    Candidate("posttrain-prune", "prune", "posttrain", STRUCTURAL, lambda c: not _trains(c), _posttrain_stage,
              _posttrain_space),
    Candidate("svd", "lowrank", "svd", STRUCTURAL, lambda c: True, _lowrank_stage, _lowrank_space),
    Candidate("int8-onnx", "export", "int8", EXPORT, lambda c: c.cfg.runtime == "onnxruntime",
              lambda c: None, lambda c: {"export.onnx.precision": {"choices": ["fp32", "int8"]}}),
]


def applicable(ctx: Context, names: list[str] | None = None) -> list[Candidate]:
    """The candidates that apply here, in a valid order; ``names`` restricts them (unknown names raise)."""
    from slimkit.errors import ConfigError, did_you_mean
    from slimkit.registry import kinds

    known = {c.name for c in CANDIDATES}
    for n in names or []:
        if n not in known:
            raise ConfigError(f"unknown technique {n!r}.{did_you_mean(n, known)}",
                              hint=f"Known: {', '.join(sorted(known))}.")
    registered = kinds()
    out = [c for c in CANDIDATES if (names is None or c.name in names) and c.applies(ctx)
           and (c.kind == "export" or c.method in registered.get(c.kind, {}))]
    return sorted(out, key=lambda c: c.order)


__all__ = ["CANDIDATES", "Candidate", "Context", "applicable", "sensitive_units"]
