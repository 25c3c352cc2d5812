"""Pruning configs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import PassConfig
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field
from slimkit.config.posttrain import BlockRefitConfig


class MagnitudePruneConfig(PassConfig):
    """Unstructured magnitude pruning to ``sparsity`` (fraction of prunable weights set to zero).

    scope: ``layer`` prunes each layer to the same sparsity; ``global`` ranks all weights together.
    steps > 1 prunes iteratively on a schedule, fine-tuning between steps with ``finetune``.
    """

    kind: ClassVar[str] = "prune"
    handler_module: ClassVar[str] = "slimkit.passes.prune.unstructured"
    renamed: ClassVar[dict[str, str]] = {"exclude": "skip"}
    method: Literal["magnitude"] = "magnitude"
    sparsity: float = Field(gt=0, lt=1)
    scope: Literal["layer", "global"] = "global"
    norm: Literal["l1", "l2"] = "l1"
    steps: int = Field(1, ge=1, le=100)
    schedule: Literal["cubic", "linear"] = "cubic"
    finetune: FinetuneConfig | None = None
    include: list[str] = Field(default_factory=lambda: ["Linear", "Conv1d", "Conv2d", "Conv3d"])
    skip: list[str] = skip_field("left dense")
    filter_fn: LayerFilterFn | None = filter_fn_field()
    min_numel: int = Field(0, ge=0, description="leave layers with fewer weights than this dense")


class _OneShotConfig(PassConfig):
    """Fields shared by the calibration-based one-shot sparsity methods (``wanda``, ``sparsegpt``)."""

    kind: ClassVar[str] = "prune"
    handler_module: ClassVar[str] = "slimkit.passes.prune.oneshot"
    renamed: ClassVar[dict[str, str]] = {"exclude": "skip"}
    sparsity: float | None = Field(None, gt=0, lt=1, description="unstructured: fraction of each layer's weights")
    n: int | None = Field(None, ge=1, description="N:M: keep n of every m consecutive input weights")
    m: int | None = Field(None, ge=2, le=64)
    include: list[Literal["Linear", "Conv2d"]] = Field(default_factory=lambda: ["Linear", "Conv2d"], min_length=1)
    skip: list[str] = skip_field("left dense")
    filter_fn: LayerFilterFn | None = filter_fn_field()
    min_numel: int = Field(0, ge=0, description="leave layers with fewer weights than this dense")
    calibration_batches: int | None = Field(None, ge=1, description="use at most this many calibration batches")
    block_refit: BlockRefitConfig | None = Field(None, description="then refit each block to the original's "
                                                                   "output on the calibration data (its zeros kept)")
    allocation: Literal["uniform", "owl", "sensitivity"] = Field(
        "uniform", description="unstructured: 'uniform' (every layer at sparsity); 'sensitivity' (blocks whose "
                               "Wanda pruning alone changes the output most get less sparsity) or 'owl' (Yin et al. "
                               "2024: blocks with more outlier Wanda scores get less), within +-owl_lambda, the "
                               "weight-weighted mean staying at sparsity")
    owl_lambda: float = Field(0.08, gt=0, lt=0.5, description="allocation: largest deviation of a block's sparsity")
    owl_m: float = Field(5.0, gt=1, le=100, description="owl: a score is an outlier above owl_m x its block's mean")
    sensitivity_batches: int = Field(2, ge=1, le=64, description="sensitivity: calibration batches measured")
    sequential: bool | Literal["block", "layer"] = Field(
        True, description="'block' (or true): calibrate each block on the inputs of the already pruned blocks "
                          "before it (one calibration pass per block); 'layer': also within a block, each set of "
                          "layers that read the same input (attention q/k/v, ...) sees the inputs of the already "
                          "pruned layers before it; false: all layers from the unpruned model at once")

    @model_validator(mode="after")
    def _one_target(self) -> _OneShotConfig:
        nm = (self.n, self.m)
        if (self.n is None) != (self.m is None):
            raise ValueError(f"give n and m together (got n={self.n}, m={self.m})")
        if (self.sparsity is None) == (self.n is None):
            raise ValueError("give exactly one of sparsity (unstructured) or n and m (N:M), "
                             f"got sparsity={self.sparsity}, n:m={nm[0]}:{nm[1]}")
        if self.allocation != "uniform" and self.sparsity is None:
            raise ValueError(f"allocation={self.allocation!r} needs unstructured sparsity, not n:m")
        if self.n is not None and self.m is not None and self.n >= self.m:
            raise ValueError(f"n must be smaller than m, got n={self.n}, m={self.m}")
        return self


class WandaPruneConfig(_OneShotConfig):
    """One-shot sparsity by Wanda (Sun et al. 2023): remove the weights with the smallest ``|W_ij| * ||x_j||``
    (``||x_j||``: the L2 norm of input column j over the calibration data), per output row (unstructured) or
    per group of ``m`` inputs (N:M). No weight update. Needs calibration data."""

    method: Literal["wanda"] = "wanda"


class SparseGPTConfig(_OneShotConfig):
    """One-shot sparsity by SparseGPT (Frantar & Alistarh 2023): choose and remove weights column block by
    column block with the OBS criterion ``w^2 / [H^-1]_jj`` and update the remaining weights of each row to
    compensate, with ``H = X^T X`` from the calibration inputs (dampened by ``dampening * mean(diag H)``).
    Needs calibration data."""

    method: Literal["sparsegpt"] = "sparsegpt"
    dampening: float = Field(0.01, gt=0, le=1, description="fraction of mean(diag H) added to the diagonal")
    block_size: int = Field(128, ge=1, description="columns processed together (mask chosen per block)")


__all__ = ["MagnitudePruneConfig", "SparseGPTConfig", "WandaPruneConfig"]
