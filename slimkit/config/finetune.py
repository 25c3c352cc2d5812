"""Fine-tuning config, used by the finetune pass and by every pass that fine-tunes between steps."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from slimkit.config.base import PassConfig


class FinetuneConfig(PassConfig):
    """Supervised fine-tuning (see :func:`slimkit.passes.finetune.loop.train_model`).

    amp: ``auto`` is fp32 on CPU and fp16 autocast with a GradScaler on CUDA; ``bf16`` works on both;
    ``fp16`` needs CUDA. ``patience`` stops after that many epochs without a better val accuracy and
    ``keep_best`` restores the best-val weights at the end. ``keep_sparsity`` keeps weights that are
    exactly zero in prunable layers (Linear, Conv) at zero, so fine-tuning after pruning keeps the sparsity.
    """

    kind: ClassVar[str] = "finetune"
    handler_module: ClassVar[str] = "slimkit.passes.finetune.loop"
    method: Literal["supervised"] = "supervised"
    epochs: int = Field(3, ge=0, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without val improvement")
    keep_best: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    keep_sparsity: bool = True


__all__ = ["FinetuneConfig"]
