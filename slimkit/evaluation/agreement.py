"""How closely two models' outputs agree, computed once for every caller (evaluation fidelity, mixed-precision
scoring, ONNX and int8 parity, embedding fidelity): per-row cosine similarity and argmax (top-1) agreement.

Inputs are tensors or arrays ``[n, ...]`` of the same shape; rows are flattened and compared in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import DataError

__all__ = ["argmax_agreement", "as_rows", "row_cosine"]


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
