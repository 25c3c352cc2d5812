"""Fidelity of embeddings to a reference, for models without labelled data (sentence encoders, feature
extractors): per-sample cosine (mean and minimum), top-1 agreement and retrieval agreement (are the top-k
nearest neighbours of every item in the set unchanged?).

Named ``embedding_fidelity`` rather than ``fidelity``: ``slimkit.evaluation.fidelity`` is the function that
compares two models' outputs, and a submodule of the same name would replace it on first import.

Inputs are arrays or tensors ``[n, dim]`` of the same shape, row ``i`` of both from the same input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import DataError
from slimkit.evaluation.agreement import row_cosine

__all__ = ["cosine_stats", "embedding_fidelity", "neighbours", "retrieval_agreement", "top1_agreement"]


def _as_2d(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DataError(f"{what} must be a non-empty [n, dim] array, got shape {arr.shape}.",
                        hint="Pass one embedding per row.")
    return arr


def _pair(emb: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(emb, "embeddings"), _as_2d(ref, "reference embeddings")
    if a.shape != b.shape:
        raise DataError(f"embeddings {a.shape} and reference {b.shape} differ in shape.",
                        hint="Embed the same inputs, in the same order, with both models.")
    return a, b


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_stats(emb: Any, ref: Any) -> dict[str, float]:
    """``{"cosine": mean, "cosine_min": min}`` of the per-row cosine similarity."""
    a, b = _pair(emb, ref)
    cos = row_cosine(a, b)
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}


def neighbours(emb: Any, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of the ``k`` nearest other rows by cosine similarity, nearest first (ties: lower
    index first)."""
    a = _unit(_as_2d(emb, "embeddings"))
    n = a.shape[0]
    if not 1 <= k < n:
        raise DataError(f"k={k} neighbours need 1 <= k < n={n} items.")
    sim = a @ a.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def top1_agreement(emb: Any, ref: Any) -> float:
    """Fraction of rows whose nearest other row is the same in ``emb`` and ``ref``."""
    a, b = _pair(emb, ref)
    return float((neighbours(a, 1)[:, 0] == neighbours(b, 1)[:, 0]).mean())


def retrieval_agreement(emb: Any, ref: Any, k: int = 5) -> dict[str, float]:
    """``{"overlap": mean |topk(emb) & topk(ref)| / k, "unchanged": fraction of rows whose top-k set is
    identical}`` over the rows of the set, each row used as a query against the others."""
    a, b = _pair(emb, ref)
    na, nb = neighbours(a, k), neighbours(b, k)
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(na.tolist(), nb.tolist(), strict=True)])
    return {"overlap": float(overlap.mean()), "unchanged": float((overlap == 1.0).mean())}


def embedding_fidelity(emb: Any, ref: Any, *, k: int = 5) -> dict[str, float]:
    """All of it: ``cosine``, ``cosine_min``, ``top1_agreement`` (nearest neighbour unchanged),
    ``retrieval_overlap@k`` and ``retrieval_unchanged@k`` (see :func:`retrieval_agreement`)."""
    a, b = _pair(emb, ref)
    out: dict[str, float] = {**cosine_stats(a, b), "top1_agreement": top1_agreement(a, b)}
    ra = retrieval_agreement(a, b, k)
    out[f"retrieval_overlap@{k}"] = ra["overlap"]
    out[f"retrieval_unchanged@{k}"] = ra["unchanged"]
    return out
