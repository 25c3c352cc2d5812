"""Axes that do not mislead: when the whole span of a measured axis is within its measurement noise, the axis
is drawn from zero and marked "no measurable difference" instead of stretching noise across the plot.
(Figures themselves come from :mod:`slimkit.analysis.figures`.)
"""

from __future__ import annotations

from typing import Any


def latency_noise(metrics: list[dict[str, Any]]) -> float | None:
    """The run-to-run spread (p90 - median) of the fastest latency among ``metrics`` (None: none measured).

    Latencies are told apart when the slowest median lies beyond the fastest one's spread; a single noisy
    point elsewhere does not hide a real difference."""
    lats = [lat for m in metrics if (lat := m.get("latency_ms"))
            and lat.get("p90") is not None and lat.get("median") is not None]
    if not lats:
        return None
    fastest = min(lats, key=lambda lat: lat["median"])
    return fastest["p90"] - fastest["median"]


def within_noise(values: list[float], noise: float | None) -> bool:
    """True when two or more values differ by no more than ``noise`` (their differences are not measurable)."""
    if noise is None or len(values) < 2:
        return False
    return max(values) - min(values) <= noise


def mark_if_within_noise(ax: Any, values: list[float], noise: float | None, *, axis: str = "x",
                         unit: str = "") -> str | None:
    """If ``values`` are within ``noise``, draw ``axis`` from zero and write "no measurable difference" on the
    plot; return that note (None when the differences are larger than the noise and the axis is left alone)."""
    if not within_noise(values, noise):
        return None
    top = max(values) * 1.15 or 1.0
    (ax.set_xlim if axis == "x" else ax.set_ylim)(0, top)
    span = max(values) - min(values)
    note = (f"no measurable difference: span {span:.3g}{unit}\nwithin the run-to-run spread "
            f"{noise:.3g}{unit} (p90 - median of the fastest)")
    ax.set_title(note, fontsize=7, color="#b00")
    return note.replace("\n", " ")


__all__ = ["latency_noise", "mark_if_within_noise", "within_noise"]
