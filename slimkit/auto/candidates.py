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
    # the coarse start: settings of this candidate's own space tried first (the sampler refines from there)
    coarse: Callable[[Context], list[dict[str, Any]]] = lambda c: []  # noqa: E731


def sensitive_units(profile: dict[str, Any], fraction: float = 0.25) -> list[str]:
    """The layers to shield from pruning: the most sensitive quarter of those that prune alone, ranked by
    fidelity lost per unit of measured latency share (a layer that costs little time and loses much is
    shielded first)."""
    share = {r["unit"]: r["share"] or 0.0 for r in profile["cost"]["layers"]}
    rows = [r for r in profile["sensitivity"]["layers"] if r["prunable_alone"] and r["prune_loss"] > 0]
    rows.sort(key=lambda r: -r["prune_loss"] / max(share.get(r["unit"], 0.0), 1e-3))
    return [r["unit"] for r in rows[:max(1, math.ceil(fraction * len(rows)))]] if rows else []


RECOVERY_SHARE = 0.2     # one trial's recovery takes at most this share of the budget ...
MAX_RECOVERY_EPOCHS = 8  # ... and at most this many epochs
MACS_RANGE = (0.25, 0.8)  # structured pruning: the fraction of the MACs kept, searched in this range


def recovery_epochs(c: Context) -> int:
    """The most fine-tuning epochs a trial may spend recovering: ``finetune_epochs`` when given; without it,
    as many as fit in a fifth of the budget at the measured epoch time (profile ``epoch_s``), 1 to 8; 0
    without labels."""
    if not c.labelled:
        return 0
    if c.cfg.finetune_epochs is not None:
        return int(c.cfg.finetune_epochs)
    epoch_s = c.profile.get("epoch_s")
    if not epoch_s:
        return 1
    return int(max(1, min(MAX_RECOVERY_EPOCHS, c.cfg.budget_s * RECOVERY_SHARE // epoch_s)))


def macs_range(c: Context) -> tuple[float, float]:
    """The fraction of MACs kept that structured pruning searches: ``MACS_RANGE``, raised above the measured
    floor (profile ``macs_floor``: the most pruning can remove here) so every target is reachable."""
    low, high = MACS_RANGE
    floor = c.profile.get("macs_floor")
    if floor is not None:
        low = max(low, round(floor + 0.05, 3))
    return min(low, high), high


def _prune_stage(c: Context) -> dict[str, Any]:
    # target_macs (not a per-layer ratio): the pruned cost is what the search controls; channel counts rounded
    # to 8, which onnxruntime's int8 and fp32 convolution kernels run without remainder loops
    body: dict[str, Any] = {"method": "structured", "target_macs": max(0.5, macs_range(c)[0]), "importance": "l2",
                            "round_to": 8,
                            "unreached": "ignore"}
    epochs = recovery_epochs(c)
    if epochs > 0:
        body["finetune"] = {"epochs": epochs, "lr": 0.001}
    return {"prune": body}


def _prune_space(c: Context) -> dict[str, dict[str, Any]]:
    low, high = macs_range(c)
    space: dict[str, dict[str, Any]] = {"stages[prune].target_macs": {"low": low, "high": high}}
    shield = sensitive_units(c.profile)
    if shield:
        space["stages[prune].skip"] = {"choices": [[], shield]}
    epochs = recovery_epochs(c)
    if epochs > 1:
        space["stages[prune].finetune.epochs"] = {"low": 1, "high": epochs}
    return space


def _prune_coarse(c: Context) -> list[dict[str, Any]]:
    """Three depths of pruning, each with the most recovery allowed: the fast end first, where a latency
    limit usually sits when per-op overhead is a large part of the cost."""
    epochs = recovery_epochs(c)
    more: dict[str, Any] = {"stages[prune].finetune.epochs": epochs} if epochs > 1 else {}
    if sensitive_units(c.profile):  # nothing shielded: the floor the range was measured at
        more["stages[prune].skip"] = []
    low, high = macs_range(c)
    levels = sorted({min(max(m, low), high) for m in (0.35, 0.5, 0.65)})
    return [{"stages[prune].target_macs": m, **more} for m in levels]


def _posttrain_stage(c: Context) -> dict[str, Any]:
    # each block then refit to the original's output on the calibration data (slimkit.passes.blockfit): MiniLM
    # at 0.6 of the FLOPs 0.82 -> 0.92 cosine with 400 steps a layer; 200 keep a trial within a few minutes
    return {"prune": {"method": "posttrain", "target_macs": 0.6, "block_refit": {"steps": 200}}}


# post-training pruning's searched MACs kept: its coarse start (the shallow end first: MiniLM loses 0.007 cosine
# at 0.92, 0.023 at 0.85) lies inside, so Optuna never proposes a value outside the distribution it samples
POSTTRAIN_MACS = (0.3, 0.95)
POSTTRAIN_COARSE = (0.92, 0.85)


def _posttrain_space(c: Context) -> dict[str, dict[str, Any]]:
    low, high = POSTTRAIN_MACS
    space: dict[str, dict[str, Any]] = {"stages[prune].target_macs": {"low": low, "high": high}}
    shield = sensitive_units(c.profile)
    if shield:
        space["stages[prune].skip"] = {"choices": [[], shield]}
    return space


def _trains(c: Context) -> bool:
    """Recovery by fine-tuning is possible: labels, and epochs allowed."""
    return recovery_epochs(c) > 0


def _lowrank_stage(c: Context) -> dict[str, Any]:
    return {"lowrank": {"method": "svd", "energy": 0.95}}


def _lowrank_space(c: Context) -> dict[str, dict[str, Any]]:
    return {"stages[lowrank].energy": {"low": 0.8, "high": 0.995}}


CANDIDATES: list[Candidate] = [
    Candidate("structured-prune", "prune", "structured", STRUCTURAL, _trains, _prune_stage, _prune_space,
              _prune_coarse),
    # without labels or training time: post-training pruning that refits from calibration data instead
    Candidate("posttrain-prune", "prune", "posttrain", STRUCTURAL, lambda c: not _trains(c), _posttrain_stage,
              _posttrain_space, lambda c: [{"stages[prune].target_macs": m} for m in POSTTRAIN_COARSE]),
    Candidate("svd", "lowrank", "svd", STRUCTURAL, lambda c: True, _lowrank_stage, _lowrank_space),
    Candidate("int8-onnx", "export", "int8", EXPORT, lambda c: c.cfg.runtime == "onnxruntime",
              lambda c: None, lambda c: {"export.onnx.precision": {"choices": ["fp32", "int8"]}},
              lambda c: [{"export.onnx.precision": "int8"}]),
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


__all__ = ["CANDIDATES", "MACS_RANGE", "POSTTRAIN_COARSE", "POSTTRAIN_MACS", "Candidate", "Context", "applicable", "macs_range", "recovery_epochs",
           "sensitive_units"]
