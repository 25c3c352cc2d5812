"""Sparsity schedules for iterative pruning."""

from __future__ import annotations

from typing import Literal

Schedule = Literal["cubic", "linear"]


def sparsity_schedule(final: float, steps: int, kind: Schedule = "cubic", initial: float = 0.0) -> list[float]:
    """Target sparsity after each of ``steps`` pruning steps, ending exactly at ``final``.

    cubic (Zhu & Gupta 2017, "To prune, or not to prune"):
    ``s_t = s_f + (s_i - s_f) * (1 - t/n)**3`` for ``t = 1..n``, i.e. ``s_f * (1 - (1 - t/n)**3)`` from a
    dense start: prune fast while many redundant weights remain, then slowly.
    linear: ``s_t = s_i + (s_f - s_i) * t/n``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if kind not in ("cubic", "linear"):
        raise ValueError(f"schedule must be 'cubic' or 'linear', got {kind!r}")
    out = []
    for t in range(1, steps + 1):
        frac = t / steps
        if kind == "cubic":
            out.append(final + (initial - final) * (1.0 - frac) ** 3)
        else:
            out.append(initial + (final - initial) * frac)
    out[-1] = final
    return out
