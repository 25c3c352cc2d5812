"""Low-rank factorization config (truncated SVD of Linear and Conv2d weights)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import PassConfig
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field
from slimkit.config.posttrain import BlockRefitConfig


class SVDConfig(PassConfig):
    """Replace each eligible Linear / Conv2d by two thinner layers from a truncated SVD of its weight.

    Give exactly one of:
      ``rank_ratio``   rank = ceil(rank_ratio * min(out, in)) per layer (``in`` is in_channels*kh*kw for convs);
      ``energy``       the smallest rank whose singular values keep this fraction of sum(s^2) per layer;
      ``param_budget`` the fraction of the eligible layers' weights to keep in total, allocated per layer
                       to minimize the summed relative error (1 - retained energy) of the layers: layers with a
                       fast-decaying spectrum get small ranks, flat-spectrum layers may stay dense.
    A layer is left alone (and logged) when its factorization would not save parameters
    (``r * (in + out) >= in * out``), when its name matches a ``skip`` glob, or when it is a grouped conv.
    ``finetune`` fine-tunes afterwards when the context has a train loader.

    ``whiten`` (activation-aware, SVD-LLM style; needs calibration data): factorize ``W S`` where
    ``S S^T = X^T X + dampening * mean(diag) I`` is the Cholesky factor of the layer's calibration input
    Gram matrix, then unwhiten the right factor (``V^T S^-1``). Truncating ``W S`` at rank r minimizes the
    layer's output error on the calibration inputs, and its singular values measure that error, so
    ``energy`` and ``param_budget`` then allocate ranks by output error instead of weight error. With
    ``sequential`` each block (module path up to its first number) is factorized with statistics from
    the already factorized blocks before it (``sequential="layer"``: each set of layers reading the same input,
    after the layers that run before it); ranks are planned once, from the original model.
    """

    kind: ClassVar[str] = "lowrank"
    handler_module: ClassVar[str] = "slimkit.passes.lowrank.svd"
    method: Literal["svd"] = "svd"
    rank_ratio: float | None = Field(None, gt=0, le=1)
    energy: float | None = Field(None, gt=0, le=1)
    param_budget: float | None = Field(None, gt=0, lt=1)
    min_rank: int = Field(1, ge=1)
    skip: list[str] = skip_field()
    filter_fn: LayerFilterFn | None = filter_fn_field()
    include: list[Literal["Linear", "Conv2d"]] = Field(default_factory=lambda: ["Linear", "Conv2d"], min_length=1)
    finetune: FinetuneConfig | None = None
    whiten: bool = Field(False, description="factorize against the calibration inputs (needs calibration)")
    dampening: float = Field(0.01, gt=0, le=1, description="whiten: fraction of mean(diag X^T X) added to the diagonal")
    sequential: bool | Literal["block", "layer"] = Field(
        True, description="whiten: refresh the statistics block by block ('block' or true), or before every set "
                          "of layers that read the same input ('layer': an FFN's second layer sees the first one "
                          "factorized)")
    calibration_batches: int | None = Field(None, ge=1, description="whiten: use at most this many batches")
    block_refit: BlockRefitConfig | None = Field(None, description="then refit each block to the original's "
                                                                   "output on the calibration data (needs calibration)")

    @model_validator(mode="after")
    def _exactly_one(self) -> SVDConfig:
        given = [k for k in ("rank_ratio", "energy", "param_budget") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of rank_ratio, energy, param_budget ({got})")
        return self


__all__ = ["SVDConfig"]
