"""Distillation config: logit KD (Hinton), feature KD (FitNets-style adapters) and mutual learning (DML)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import PassConfig, StrictModel
from slimkit.config.finetune import FinetuneConfig


class FeaturePair(StrictModel):
    """One feature-distillation pair: the output of student module ``student`` is matched (through a learned
    adapter) to the output of teacher module ``teacher``. Names are ``named_modules()`` names."""

    student: str = Field(min_length=1)
    teacher: str = Field(min_length=1)


class DistillConfig(PassConfig):
    """Train the model (the student) against a teacher.

    method:
      ``logits``  loss = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).
      ``feature`` the logits loss plus ``beta`` * (MSE or 1 - cosine) between named intermediate outputs,
                  with a learned 1x1 conv / Linear adapter mapping the student's width to the teacher's.
      ``mutual``  deep mutual learning: the student and a peer (a copy of the teacher, or the teacher itself
                  with ``update_teacher``) learn together, each from the labels and from the other's
                  softened outputs.
    cache_teacher: keep the teacher's outputs keyed by the exact bytes of each input batch, so the teacher
      runs once per distinct batch. Only useful when the loader yields the same batches every epoch (a fixed,
      unshuffled dataset without random augmentation); it is never wrong otherwise, but then it only costs
      memory (the cache holds at most ``cache_max_batches`` batches and is bypassed when full).
    """

    kind: ClassVar[str] = "distill"
    handler_module: ClassVar[str] = "slimkit.passes.distill.trainer"
    method: Literal["logits", "feature", "mutual"] = "logits"
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label cross-entropy")
    epochs: int = Field(3, ge=0, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    keep_sparsity: bool = Field(True, description="keep exactly-zero weights at zero (distil after pruning)")
    keep_best: bool = True
    features: list[FeaturePair] = Field(default_factory=list)
    beta: float = Field(1.0, ge=0, le=1e4, description="weight of the feature loss")
    feature_loss: Literal["mse", "cosine"] = "mse"
    adapter: Literal["auto", "always"] = Field(
        "auto", description="auto: an adapter only where widths differ; always: also where they match")
    cache_teacher: bool = False
    update_teacher: bool = Field(False, description="mutual only: train the teacher object itself as the peer "
                                 "instead of a copy of it")
    cache_max_batches: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _check_features(self) -> DistillConfig:
        if self.method == "feature" and not self.features:
            raise ValueError("method 'feature' needs at least one pair in features "
                             "(e.g. [{student: features.1, teacher: layer2}])")
        if self.method != "feature" and self.features:
            raise ValueError(f"features are only used by method 'feature', not '{self.method}'")
        if self.update_teacher and self.method != "mutual":
            raise ValueError("update_teacher only applies to method 'mutual'")
        return self


class FeatureDistillConfig(DistillConfig):
    """``DistillConfig`` with ``method='feature'``: what a recipe stage ``{distill: {method: feature}}``
    builds (the registry keys recipe methods by config class). Same fields and handler."""

    method: Literal["feature"] = "feature"


class MutualDistillConfig(DistillConfig):
    """``DistillConfig`` with ``method='mutual'`` (see :class:`FeatureDistillConfig`)."""

    method: Literal["mutual"] = "mutual"


def finetune_config(cfg: DistillConfig) -> FinetuneConfig:
    """The training settings of a distill config as a :class:`FinetuneConfig`."""
    return FinetuneConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                          max_steps_per_epoch=cfg.max_steps_per_epoch, keep_sparsity=cfg.keep_sparsity,
                          keep_best=cfg.keep_best, patience=None)


__all__ = ["DistillConfig", "FeatureDistillConfig", "MutualDistillConfig"]
