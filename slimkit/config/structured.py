"""Structured pruning (channels, filters, heads) and N:M semi-structured sparsity configs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import PassConfig
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field
from slimkit.config.recipe import LatencyConfig


class StructuredPruneConfig(PassConfig):
    """Physically remove channels, filters, attention heads, FFN width and recurrent hidden units.

    Give exactly one target: ``ratio`` (fraction of prunable units removed from each group, or from all
    groups together with ``scope="global"``), ``target_macs`` (fraction of the original MACs to keep;
    solved by bisection on the ratio, landing within ``macs_tolerance``) or ``target_latency`` (fraction of
    the original latency to keep, measured with ``latency`` settings on the machine the pass runs on; solved
    by bisection on the ratio, each candidate timed against the current model back to back, landing within
    ``latency_tolerance`` or reporting what it reached). ``importance`` scores units:
    ``l1``/``l2`` weight magnitude, ``bn_scale`` (|gamma|), ``taylor`` (|w * grad| on calibration batches),
    ``entropy`` (of channel activations on calibration batches). Skipped layers (``skip``, ``filter_fn``) keep their
    output width; model outputs (the classifier) always keep theirs. ``steps`` > 1 prunes iteratively, with
    ``finetune`` between steps when a train loader is given.
    """

    kind: ClassVar[str] = "prune"
    handler_module: ClassVar[str] = "slimkit.passes.prune.structured"
    renamed: ClassVar[dict[str, str]] = {"protected": "skip"}
    method: Literal["structured"] = "structured"
    ratio: float | None = Field(None, ge=0, lt=1)
    target_macs: float | None = Field(None, gt=0, le=1, description="fraction of the original MACs to keep")
    target_latency: float | None = Field(None, gt=0, le=1,
                                         description="fraction of the original measured latency to keep")
    importance: Literal["l1", "l2", "bn_scale", "taylor", "entropy"] = "l2"
    aggregate: Literal["mean", "sum"] = "mean"
    scope: Literal["layer", "global"] = "layer"
    round_to: int = Field(1, ge=1, le=1024)
    skip: list[str] = skip_field("that keep their width")
    filter_fn: LayerFilterFn | None = filter_fn_field()
    max_group_ratio: float = Field(0.9, gt=0, lt=1, description="never remove more of one group than this")
    steps: int = Field(1, ge=1, le=100)
    finetune: FinetuneConfig | None = None
    calibration_batches: int = Field(4, ge=1, le=10_000)
    macs_tolerance: float = Field(0.02, gt=0, lt=0.5)
    unreached: Literal["error", "ignore"] = "error"
    latency_tolerance: float = Field(0.05, gt=0, lt=0.5, description="relative; for target_latency")
    latency: LatencyConfig = Field(default_factory=lambda: LatencyConfig(batch=1, warmup=5, repeats=20),
                                   description="how target_latency is measured (threads None: pinned to "
                                               "torch's current thread count)")

    @model_validator(mode="after")
    def _one_target(self) -> StructuredPruneConfig:
        given = [n for n in ("ratio", "target_macs", "target_latency") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, target_macs or target_latency (got {given or 'none'})")
        return self


class NMSparsityConfig(PassConfig):
    """N:M semi-structured sparsity: in every run of ``m`` consecutive weights along the input dimension
    keep the ``n`` largest. 2:4 runs on NVIDIA sparse tensor cores (Ampere and newer)."""

    kind: ClassVar[str] = "prune"
    handler_module: ClassVar[str] = "slimkit.passes.prune.nm"
    renamed: ClassVar[dict[str, str]] = {"exclude": "skip"}
    method: Literal["nm"] = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2, le=64)
    include: list[str] = Field(default_factory=lambda: ["Linear"], description="layer types to sparsify")
    skip: list[str] = skip_field("left dense")
    filter_fn: LayerFilterFn | None = filter_fn_field()

    @model_validator(mode="after")
    def _n_below_m(self) -> NMSparsityConfig:
        if self.n >= self.m:
            raise ValueError(f"n must be smaller than m, got n={self.n}, m={self.m}")
        return self


__all__ = ["NMSparsityConfig", "StructuredPruneConfig"]
