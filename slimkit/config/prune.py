"""Pruning configs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from slimkit.config.base import PassConfig
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field


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


__all__ = ["MagnitudePruneConfig"]
