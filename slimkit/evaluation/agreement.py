"""How closely two models' outputs agree, computed once for every caller (evaluation fidelity, mixed-precision
scoring, ONNX and int8 parity, embedding fidelity): per-row cosine similarity and argmax (top-1) agreement.

Inputs are tensors or arrays ``[n, ...]`` of the same shape; rows are flattened and compared in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import DataError

__all__ = ["agreement_interval", "argmax_agreement", "as_rows", "row_cosine"]


def as_rows(x: Any) -> np.ndarray:
    """``x`` (a tensor or array ``[n, ...]``) as a float64 array ``[n, features]``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1)


def row_cosine(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (``[n]``); two all-zero rows count as
    identical (1.0). Raises DataError when the shapes differ."""
    x, y = as_rows(a), as_rows(b)
    if x.shape != y.shape:
        raise DataError(f"outputs of shape {x.shape} and {y.shape} cannot be compared row by row.",
                        hint="Compare outputs of the same inputs, in the same order.")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    cos = (x * y).sum(1) / np.maximum(nx * ny, 1e-12)
    return np.where((nx == 0) & (ny == 0), 1.0, cos)


def argmax_agreement(a: Any, b: Any) -> float:
    """Fraction of positions whose argmax over the last axis is the same in ``a`` and ``b`` (for ``[n, classes]``
    outputs: the fraction of samples with the same top-1 class)."""
    x = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    y = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    if x.shape != y.shape:
        raise DataError(f"outputs of shape {x.shape} and {y.shape} cannot be compared.")
    return float((x.argmax(-1) == y.argmax(-1)).mean())


def agreement_interval(hits: Any, groups: Any = None, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """A ``level`` confidence interval for the fraction of true values in ``hits`` (per-sample agreement, 0/1).

    Without ``groups``: the Wilson score interval (samples independent). With ``groups`` (one label per
    sample, e.g. the photograph a crop was cut from): a cluster bootstrap that resamples whole groups, since
    crops of one photo agree or disagree together and count as far fewer than ``n`` independent samples.
    Raises DataError on an empty input or a ``groups`` of another length."""
    h = np.asarray(hits.detach().cpu().numpy() if hasattr(hits, "detach") else hits, dtype=np.float64).reshape(-1)
    if h.size == 0:
        raise DataError("agreement_interval: no samples.", hint="Pass one 0/1 value per compared sample.")
    if not 0 < level < 1:
        raise DataError(f"agreement_interval: level={level}; expected a value in (0, 1).")
    alpha = 1 - level
    if groups is None:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1 - alpha / 2)
        n, p = h.size, float(h.mean())
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, float(centre - half)), min(1.0, float(centre + half))
    g = np.asarray(groups)
    if g.shape[0] != h.size:
        raise DataError(f"agreement_interval: {h.size} samples but {g.shape[0]} group labels.",
                        hint="Give one group label per sample.")
    _, idx = np.unique(g, return_inverse=True)
    sums, counts = np.bincount(idx, weights=h), np.bincount(idx).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sums), size=(resamples, len(sums)))
    stats = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
