"""The distill pass: train a student against a frozen teacher (logits or features), or with a peer (mutual).

The teacher runs in eval mode under ``torch.no_grad()`` and is restored to its previous mode afterwards; its
weights are never changed (the mutual peer is a copy unless ``update_teacher`` is used). Training itself is
:func:`slimkit.passes.finetune.loop.train_model` with a distillation ``loss_fn``, so AMP, sparsity masks
(distil after pruning), the LR schedule and best-epoch restore behave as in fine-tuning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.config.distill import DistillConfig, FeatureDistillConfig, MutualDistillConfig, finetune_config
from slimkit.context import PassContext, PassRecord, eval_mode, model_device
from slimkit.data.batch import batch_fingerprint, call_model, split_batch
from slimkit.errors import ConfigError
from slimkit.passes.distill.feature import FeatureTap, build_adapters, features_loss
from slimkit.passes.distill.losses import kd_loss
from slimkit.passes.distill.mutual import PeerPair, mutual_loss_fn
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device) for v in x)
    return x


@dataclass
class TeacherRunner:
    """Runs the teacher on a batch (no grad) and returns its logits and tapped features, moved to the
    student's device. With ``cache``, results are kept by the exact bytes of the input batch."""

    teacher: nn.Module
    tap: FeatureTap | None = None
    cache: bool = False
    max_entries: int = 10_000
    hits: int = 0
    misses: int = 0
    _store: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, x: Any, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from slimkit.passes.finetune.loop import logits_of

        key = batch_fingerprint(x) if self.cache else None
        if key is not None and key in self._store:
            self.hits += 1
            logits, feats = self._store[key]
            return logits.to(device), [f.to(device) for f in feats]
        self.misses += 1
        out = call_model(self.teacher, _move(x, model_device(self.teacher)))
        logits = logits_of(out).detach()
        feats = [f.detach() for f in self.tap.take()] if self.tap is not None else []
        if key is not None and len(self._store) < self.max_entries:
            self._store[key] = (logits, feats)
        return logits.to(device), [f.to(device) for f in feats]


class StudentWithAdapters(nn.Module):
    """The student plus its feature adapters, so one optimizer trains both; ``forward`` is the student's."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


def _first_x(loader: Iterable[Any]) -> Any:
    for batch in loader:
        return split_batch(batch)[0]
    raise ConfigError("the training loader yielded no batches.")


def _check_logits(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape != t.shape:
        raise ConfigError(f"student logits have shape {tuple(s.shape)} but the teacher's have {tuple(t.shape)}.",
                          hint="Logit distillation needs the same number of classes; use method 'feature' with "
                               "alpha=1 to distil only features.")


def distill_model(student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], cfg: DistillConfig, *,
                  val_loader: Iterable[Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Train ``student`` in place against ``teacher`` with ``cfg``; return what happened (``train``: the
    :class:`TrainResult`, ``peer``: the trained mutual peer, ``adapters``, cache ``hits``/``misses``)."""
    from slimkit.passes.finetune.loop import logits_of, train_model

    if student is teacher:
        raise ConfigError("the student and the teacher are the same module object.",
                          hint="Distil into a copy: slimkit.passes.distill.student.copy_student(teacher).")
    tcfg = finetune_config(cfg)
    device = model_device(student)
    info: dict[str, Any] = {}
    if cfg.method == "mutual":
        peer = teacher if cfg.update_teacher else copy.deepcopy(teacher)
        pair = PeerPair(student, peer)
        info["train"] = train_model(pair, train_loader, tcfg, val_loader=val_loader, loss_fn=mutual_loss_fn(cfg),
                                    seed=seed, description="distill (mutual)")
        info["peer"] = peer
        return info

    s_tap = t_tap = None
    with eval_mode(teacher):
        try:
            if cfg.method == "feature":
                s_tap = FeatureTap(student, [p.student for p in cfg.features], "student").attach()
                t_tap = FeatureTap(teacher, [p.teacher for p in cfg.features], "teacher").attach()
            runner = TeacherRunner(teacher, t_tap, cache=cfg.cache_teacher, max_entries=cfg.cache_max_batches)
            # probe one batch: checks logits and gives the feature shapes for the adapters
            x0 = _move(_first_x(train_loader), device)
            with eval_mode(student), torch.no_grad():
                s0 = logits_of(call_model(student, x0))
                t0 = logits_of(call_model(teacher, _move(x0, model_device(teacher))))
            if cfg.alpha < 1.0:
                _check_logits(s0, t0)
            model: nn.Module = student
            adapters = None
            if s_tap is not None and t_tap is not None:
                adapters = build_adapters(s_tap.take(), t_tap.take(), always=cfg.adapter == "always")
                model = StudentWithAdapters(student, adapters)

            def loss_fn(m: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
                s_logits = logits_of(call_model(m, x))
                t_logits, t_feats = runner(x, s_logits.device)
                loss = kd_loss(s_logits, t_logits, y, cfg.temperature, cfg.alpha)
                if adapters is not None and s_tap is not None:
                    loss = loss + cfg.beta * features_loss(adapters, s_tap.take(), t_feats, cfg.feature_loss)
                return loss

            info["train"] = train_model(model, train_loader, tcfg, val_loader=val_loader, loss_fn=loss_fn, seed=seed,
                                        description=f"distill ({cfg.method})")
            info["adapters"] = adapters
            info["hits"], info["misses"] = runner.hits, runner.misses
            if cfg.cache_teacher:
                log.info("teacher cache: %d hit(s), %d miss(es)", runner.hits, runner.misses)
                if runner.hits == 0 and cfg.epochs > 1:
                    log.warning("cache_teacher is on but no batch repeated: the loader shuffles or augments, so "
                                "caching only costs memory here.")
        finally:
            for tap in (s_tap, t_tap):
                if tap is not None:
                    tap.detach()
    return info


@dataclass
class DistillRecord(PassRecord):
    """What a distillation stage did: its training (a TrainResult), the trained ``peer`` of mutual learning,
    the feature ``adapters`` and the teacher-output cache ``hits``/``misses`` (modules stay out of the report)."""

    key: ClassVar[str] = "distill"
    train: Any = None
    peer: nn.Module | None = None
    adapters: Any = None
    hits: int | None = None
    misses: int | None = None


def _handler(model: nn.Module, cfg: DistillConfig, ctx: PassContext) -> nn.Module:
    assert ctx.teacher is not None and ctx.train_loader is not None  # the registry checked ``needs``
    info = distill_model(model, ctx.teacher, ctx.train_loader, cfg, val_loader=ctx.val_loader, seed=ctx.seed)
    ctx.add(DistillRecord(**info))
    return model


# One handler for every method; a recipe's `method:` picks the config class (see config/distill.py).
register_pass(DistillConfig, needs=("train_loader", "teacher"), default=True)(_handler)
register_pass(FeatureDistillConfig, needs=("train_loader", "teacher"))(_handler)
register_pass(MutualDistillConfig, needs=("train_loader", "teacher"))(_handler)
distill_handler = _handler
