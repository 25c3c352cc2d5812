"""Per-layer sensitivity and mixed-precision assignment.

Analysis only reads: the caller supplies the units (ONNX node names, torch module names, ...) and a
function that builds a model with exactly one unit compressed and returns its fidelity (higher is better:
cosine to the reference, agreement, accuracy). :func:`layer_sensitivity` ranks the units by the fidelity
they lose; :func:`mixed_assignment` greedily keeps the most sensitive units at higher precision until a
fidelity floor is met or a size budget is spent; :func:`sensitivity_plot` draws the ranking as a PNG.

    table = layer_sensitivity(names, lambda u: score(quantize_only(u)), baseline=1.0)
    plan = mixed_assignment(table, fidelity_floor=0.995, budget=500_000, costs=extra_bytes,
                            evaluate=lambda keep: score(quantize_all_but(keep)))
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from slimkit.errors import ConfigError, ConstraintError

log = logging.getLogger(__name__)

__all__ = ["MixedAssignment", "UnitSensitivity", "layer_sensitivity", "mixed_assignment", "one_at_a_time",
           "sensitivity_plot", "sensitivity_table"]


@dataclass(frozen=True)
class UnitSensitivity:
    """One unit's result: ``score`` with only this unit compressed, ``loss = baseline - score``
    (larger: more sensitive), and ``cost``: what keeping it at higher precision costs (bytes), if known."""

    unit: str
    score: float
    loss: float
    cost: int | None = None


@dataclass
class MixedAssignment:
    """The plan: ``keep`` stays at higher precision, ``compress`` is compressed. ``score`` is the measured
    fidelity of the plan when ``evaluate`` was given, else the additive estimate ``baseline - sum(loss)``
    (``measured`` says which). ``met`` is whether the floor is reached; ``cost`` sums the kept units' costs.
    ``trace`` records each greedy step ``{"keep": [...], "score": ..., "cost": ...}``."""

    keep: list[str]
    compress: list[str]
    score: float
    met: bool
    cost: int
    measured: bool
    reason: str
    trace: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_sensitivity(units: Iterable[str], evaluate_one: Callable[[str], float], *, baseline: float = 1.0,
                      costs: Mapping[str, int] | None = None) -> list[UnitSensitivity]:
    """Score every unit with ``evaluate_one(unit)`` (a model with exactly that unit compressed, scored
    against the reference; higher is better) and return them ranked, most sensitive (largest loss) first.
    Ties keep the order of ``units``. Raises ConfigError for no units, duplicates or a non-finite score."""
    names = list(units)
    if not names:
        raise ConfigError("layer_sensitivity got no units.", hint="Pass ONNX node names or module names.")
    dup = sorted({u for u in names if names.count(u) > 1})
    if dup:
        raise ConfigError(f"duplicate units {dup[:5]}: each unit must be named once.")
    rows = []
    for i, unit in enumerate(names):
        score = float(evaluate_one(unit))
        if not math.isfinite(score):
            raise ConfigError(f"evaluate_one({unit!r}) returned {score}; expected a finite fidelity score.")
        rows.append((i, UnitSensitivity(unit, score, baseline - score, None if costs is None else costs.get(unit))))
        log.info("sensitivity %s: score %.6f (loss %.3g)", unit, score, baseline - score)
    rows.sort(key=lambda r: (-r[1].loss, r[0]))
    return [r for _, r in rows]


def one_at_a_time(model: Any, units: Iterable[str], compress: Callable[[Any, str], Any],
                  score: Callable[[Any], float]) -> Callable[[str], float]:
    """An ``evaluate_one`` for torch models: deep-copy ``model``, ``compress(copy, unit)`` (in place or
    returning the new model), then ``score(result)``. The original is never touched."""
    valid = set(units)

    def evaluate_one(unit: str) -> float:
        if unit not in valid:
            raise ConfigError(f"unknown unit {unit!r}.")
        clone = copy.deepcopy(model)
        out = compress(clone, unit)
        return float(score(clone if out is None else out))

    return evaluate_one


def mixed_assignment(sensitivities: Sequence[UnitSensitivity], *, fidelity_floor: float,
                     baseline: float = 1.0, budget: int | None = None, costs: Mapping[str, int] | None = None,
                     evaluate: Callable[[Sequence[str]], float] | None = None,
                     max_keep: int | None = None) -> MixedAssignment:
    """Greedy mixed precision: start with every unit compressed, then keep the most sensitive units at
    higher precision one at a time until the fidelity floor is met.

    The score of a plan is ``evaluate(keep)`` when given (measured: the fidelity of the model with the
    units in ``keep`` left alone and the rest compressed), else ``baseline - sum(loss of compressed)``.
    With ``budget`` (bytes) and ``costs`` (bytes each kept unit adds; ``UnitSensitivity.cost`` when not
    given), a unit that no longer fits is skipped and the next, cheaper one is tried; the search stops when
    the budget is spent, ``max_keep`` units are kept, or no unit is left. Never raises when the floor is
    unreachable: ``met`` is False and ``reason`` says why."""
    if not sensitivities:
        raise ConfigError("mixed_assignment got no sensitivities.", hint="Run layer_sensitivity first.")
    if budget is not None and budget < 0:
        raise ConstraintError(f"budget must be >= 0 bytes, got {budget}.")
    ranked = sorted(sensitivities, key=lambda s: -s.loss)

    def cost_of(s: UnitSensitivity) -> int:
        c = costs.get(s.unit) if costs is not None else s.cost
        if c is None and budget is not None:
            raise ConfigError(f"a budget was given but unit {s.unit!r} has no cost.",
                              hint="Pass costs={unit: bytes} or UnitSensitivity.cost.")
        return int(c or 0)

    def score_of(keep: list[str]) -> float:
        if evaluate is not None:
            return float(evaluate(list(keep)))
        kept = set(keep)
        return baseline - sum(s.loss for s in ranked if s.unit not in kept)

    keep: list[str] = []
    spent = 0
    score = score_of(keep)
    trace = [{"keep": [], "score": score, "cost": 0}]
    reason = "the floor is met with every unit compressed"
    for s in ranked:
        if score >= fidelity_floor:
            break
        if max_keep is not None and len(keep) >= max_keep:
            reason = f"max_keep={max_keep} units kept and the floor is still not met"
            break
        c = cost_of(s)
        if budget is not None and spent + c > budget:
            log.info("mixed assignment: %s does not fit (%d + %d > %d bytes)", s.unit, spent, c, budget)
            continue
        keep.append(s.unit)
        spent += c
        score = score_of(keep)
        trace.append({"keep": list(keep), "score": score, "cost": spent})
    met = score >= fidelity_floor
    if met and keep:
        reason = f"the floor is met keeping the {len(keep)} most sensitive unit(s) that fit"
    elif not met and not reason.startswith("max_keep"):
        reason = ("the size budget is spent before the floor is met" if budget is not None
                  else "the floor is not met even with every unit kept")
    kept = set(keep)
    return MixedAssignment(keep=keep, compress=[s.unit for s in ranked if s.unit not in kept], score=score,
                           met=met, cost=spent, measured=evaluate is not None, reason=reason, trace=trace)


def sensitivity_table(sensitivities: Sequence[UnitSensitivity]) -> list[dict[str, Any]]:
    """JSON-ready rows ``{"rank", "unit", "score", "loss", "cost"}``, most sensitive first."""
    ranked = sorted(sensitivities, key=lambda s: -s.loss)
    return [{"rank": i + 1, **asdict(s)} for i, s in enumerate(ranked)]


def sensitivity_plot(sensitivities: Sequence[UnitSensitivity], *, keep: Iterable[str] = (),
                     title: str = "Per-layer sensitivity", top: int | None = 40,
                     short_names: Callable[[str], str] | None = None) -> bytes:
    """A horizontal bar chart (PNG bytes) of the fidelity loss of each unit compressed alone, most
    sensitive on top; units in ``keep`` (kept at higher precision) are drawn in a second colour."""
    from slimkit.analysis.figures import figure, png_bytes

    ranked = sorted(sensitivities, key=lambda s: -s.loss)[:top]
    kept = set(keep)
    labels = [short_names(s.unit) if short_names else s.unit for s in ranked]
    with figure((8, 0.25 * len(ranked) + 1.2)) as (fig, ax):
        colours = ["#d62728" if s.unit in kept else "#1f77b4" for s in ranked]
        ax.barh(range(len(ranked)), [max(s.loss, 0.0) for s in ranked], color=colours)
        ax.set_yticks(range(len(ranked)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("fidelity loss when compressed alone")
        if any(s.loss > 0 for s in ranked):
            ax.set_xscale("symlog", linthresh=max(min(s.loss for s in ranked if s.loss > 0), 1e-9))
        ax.set_title(title + (" (red: kept at higher precision)" if kept else ""), fontsize=9)
        return png_bytes(fig)
