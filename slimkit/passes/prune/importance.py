"""Weight-magnitude importance scores. Analysis only: nothing here changes the model.

For unstructured pruning every weight is its own group, so ``l1`` (``|w|``) and ``l2`` (``w**2``) rank
the weights identically and prune the same ones; they differ only when scores are summed over groups
of weights (channels, heads) as structured pruning does.
"""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["l1", "l2"]


def magnitude_scores(weight: torch.Tensor, norm: Norm = "l1") -> torch.Tensor:
    """Per-weight importance, float32, shaped like ``weight``: ``|w|`` for ``l1``, ``w**2`` for ``l2``.

    Scores are computed in float32 (exact for fp16/bf16 weights, so their order is kept); NaN weights
    score ``+inf`` so they are never chosen for pruning silently.
    """
    w = weight.detach().float()
    if norm == "l1":
        scores = w.abs()
    elif norm == "l2":
        scores = w.square()
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return torch.nan_to_num(scores, nan=float("inf"))
