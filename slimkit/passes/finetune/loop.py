"""The training loop shared by fine-tuning, iterative pruning and (through ``loss_fn``) distillation.

AMP where the device supports it, cosine or constant learning rate, gradient clipping, early stopping
on validation accuracy, the best-val weights restored at the end, and sparsity masks re-applied after
every optimizer step so a pruned model stays pruned.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.config.finetune import FinetuneConfig
from slimkit.context import PassContext, PassRecord, eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError, DataError, DivergenceError
from slimkit.passes.prune.masks import apply_masks_, eligible_layers, masks_from_zeros, prepare_masks
from slimkit.progress import track
from slimkit.registry import register_pass

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]
"""``loss_fn(model, x, y) -> scalar loss``. ``x`` is what the batch holds (a tensor, or a tuple of
tensors passed to the model as positional arguments), already on the model's device."""


@dataclass
class TrainResult(PassRecord):
    """What :func:`train_model` did (the finetune pass's record). ``history`` holds ``{"epoch", "train_loss",
    "val_accuracy"}`` per epoch (``val_accuracy`` is ``None`` without a val loader); epochs count from 1."""

    key: ClassVar[str] = "train_result"

    epochs_run: int = 0
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass(frozen=True)
class AmpPlan:
    """How a loop runs mixed precision: ``dtype`` is the autocast dtype (``None`` = off)."""

    device_type: str
    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_amp(model: nn.Module, amp: str) -> AmpPlan:
    """Turn ``FinetuneConfig.amp`` into an :class:`AmpPlan` for this model's device and dtype.

    ``auto``: fp16 autocast with a GradScaler on CUDA for fp32 models, otherwise off (fp32 on CPU).
    ``bf16``: bf16 autocast on CPU or CUDA, no scaler. ``fp16``: CUDA only (ConfigError elsewhere).
    ``off``: no autocast. A model already in half precision never gets autocast or a scaler.
    """
    device = model_device(model)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    fp32 = param is None or param.dtype == torch.float32
    if amp == "off" or not fp32:
        return AmpPlan(device.type, None, False)
    if amp == "auto":
        if device.type == "cuda":
            return AmpPlan("cuda", torch.float16, True)
        return AmpPlan(device.type, None, False)
    if amp == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"amp='bf16' is supported on cpu and cuda, but the model is on {device}.",
                              hint="Use amp='off'.")
        return AmpPlan(device.type, torch.bfloat16, False)
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"amp='fp16' needs a CUDA model, but the model is on {device}.",
                              hint="Use amp='bf16' or amp='off' on CPU, or move the model to CUDA first.")
        return AmpPlan("cuda", torch.float16, True)
    raise ConfigError(f"unknown amp mode {amp!r}; expected auto, off, fp16 or bf16.")


def _to_device(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.to(device, non_blocking=True)
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        return x
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device, dtype) for v in x)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device, dtype) for k, v in x.items()}
    return x


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``output.logits``, or ``output[0]``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    raise DataError(f"cannot find logits in a model output of type {type(output).__name__}.")


def cross_entropy_loss(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
    """The default ``loss_fn``: cross-entropy of the model's logits against integer labels."""
    return F.cross_entropy(logits_of(call_model(model, x)).float(), y)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Any], *, amp: AmpPlan | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` over ``(x, y)`` batches, in eval mode.
    The model's train/eval mode is restored afterwards."""
    device = model_device(model)
    dtype = _input_dtype(model, amp)
    correct = total = 0
    with eval_mode(model):
        for batch in loader:
            x, y = split_batch(batch, labelled=True)
            x, y = _to_device(x, device, dtype), y.to(device)
            with amp.autocast() if amp is not None else contextlib.nullcontext():
                pred = logits_of(call_model(model, x)).argmax(dim=-1)
            correct += int((pred == y).sum().item())
            total += int(y.numel())
    return correct / total if total else 0.0


def _input_dtype(model: nn.Module, amp: AmpPlan | None) -> torch.dtype | None:
    """Floating inputs are cast to the model's dtype unless autocast handles precision."""
    if amp is not None and amp.dtype is not None:
        return None
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else None


def _steps_per_epoch(loader: Iterable[Any], cap: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return cap
    return min(n, cap) if cap is not None else n


def _make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False).",
                          hint="Unfreeze the layers to fine-tune.")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: FinetuneConfig, total: int) -> Callable[[int], float]:
    if cfg.schedule == "constant" or total <= 0:
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks holding the zeros of partly-zero Linear/Conv weights. An all-zero weight is a zero
    initialization (e.g. a zero-init head), not pruning: it is left free to train."""
    masks = masks_from_zeros(eligible_layers(model), only_sparse=True)
    for name in [n for n, m in masks.items() if not bool(m.any())]:
        log.warning("keep_sparsity: '%s' is all zeros; treating it as zero-initialized and training it", name)
        del masks[name]
    return masks


def train_model(
    model: nn.Module,
    train_loader: Iterable[Any],
    cfg: FinetuneConfig,
    *,
    val_loader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    masks: Mapping[str, torch.Tensor] | None = None,
    description: str = "fine-tune",
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` batches and return what happened.

    The loader order is the loader's own; everything else is seeded with ``torch.manual_seed(seed)``,
    so the same seed, data and device give the same weights. ``loss_fn(model, x, y) -> scalar`` replaces
    cross-entropy (distillation passes one that calls a teacher too). The learning rate follows
    ``cfg.schedule`` per step (cosine over ``epochs * steps_per_epoch`` when the loader has a length,
    otherwise per epoch). After every optimizer step, ``masks`` (``{module name: bool tensor}``, ``False``
    = held at zero) are re-applied; without explicit masks and with ``cfg.keep_sparsity``, every
    Linear/Conv weight that holds exact zeros at the start keeps them (an all-zero weight counts as
    zero-initialized and trains freely). With a ``val_loader``, accuracy
    is measured after each epoch; ``cfg.patience`` stops after that many epochs without improvement and
    ``cfg.keep_best`` restores the weights of the best epoch (an in-memory copy on CPU). Progress goes to
    :func:`slimkit.progress.track`. The model's train/eval mode is restored at the end.
    """
    amp = resolve_amp(model, cfg.amp)  # may raise before anything changes
    device = model_device(model)
    in_dtype = _input_dtype(model, amp)
    if masks is not None:
        masks = prepare_masks(model, masks)
    elif cfg.keep_sparsity:
        masks = prepare_masks(model, _sparsity_masks(model))
    if masks:
        log.debug("%s: holding zeros fixed in %d layer(s)", description, len(masks))
    result = TrainResult()
    if cfg.epochs == 0:
        return result

    torch.manual_seed(seed)
    loss_fn = loss_fn or cross_entropy_loss
    optimizer = _make_optimizer(model, cfg)
    steps = _steps_per_epoch(train_loader, cfg.max_steps_per_epoch)
    per_step = steps is not None
    total_sched = cfg.epochs * steps if per_step else cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, total_sched))
    scaler = torch.amp.GradScaler(amp.device_type) if amp.use_scaler else None
    best_state: dict[str, torch.Tensor] | None = None
    best_acc = -math.inf
    bad_epochs = 0
    was_training = model.training
    if masks:
        apply_masks_(model, masks)

    first_loss: float | None = None
    with track(description, total=cfg.epochs * steps if per_step else None) as task:
        try:
            for epoch in range(1, cfg.epochs + 1):
                model.train()
                loss_sum = torch.zeros((), device=device)
                n_steps = 0
                for batch in train_loader:
                    if cfg.max_steps_per_epoch is not None and n_steps >= cfg.max_steps_per_epoch:
                        break
                    x, y = split_batch(batch, labelled=True)
                    x, y = _to_device(x, device, in_dtype), _to_device(y, device, None)
                    optimizer.zero_grad(set_to_none=True)
                    with amp.autocast():
                        loss = loss_fn(model, x, y)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        if cfg.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        if cfg.grad_clip is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        optimizer.step()
                    if scaler is None:  # with a GradScaler an inf step is skipped by design
                        first_loss = _check_loss(float(loss.detach()), first_loss, x, cfg, description,
                                                 epoch, n_steps + 1)
                    if masks:
                        apply_masks_(model, masks)
                    if per_step:
                        scheduler.step()
                    loss_sum += loss.detach().float()
                    n_steps += 1
                    task.advance()
                if not per_step:
                    scheduler.step()
                if n_steps == 0:
                    raise DataError("the training loader yielded no batches.",
                                    hint="Check the dataset is not empty and the batch size is not too large "
                                         "with drop_last=True.")
                train_loss = float(loss_sum.item()) / n_steps
                val_acc = accuracy(model, val_loader, amp=amp) if val_loader is not None else None
                result.history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": val_acc})
                result.epochs_run = epoch
                task.update(loss=train_loss, val_acc=val_acc)
                log.info("%s epoch %d/%d: loss %.4f, val accuracy %s", description, epoch, cfg.epochs,
                         train_loss, "n/a" if val_acc is None else f"{val_acc:.4f}")
                if val_acc is None:
                    continue
                if val_acc > best_acc:
                    best_acc, result.best_epoch, result.best_val_accuracy = val_acc, epoch, val_acc
                    bad_epochs = 0
                    if cfg.keep_best and epoch < cfg.epochs:
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    elif cfg.keep_best:
                        best_state = None  # the last epoch is the best: nothing to restore
                else:
                    bad_epochs += 1
                    if cfg.patience is not None and bad_epochs >= cfg.patience:
                        result.stopped_early = True
                        log.info("%s: no val improvement for %d epoch(s); stopping after epoch %d",
                                 description, bad_epochs, epoch)
                        break
            if cfg.keep_best and best_state is not None and result.best_epoch != result.epochs_run:
                model.load_state_dict(best_state)
                log.info("%s: restored the weights of epoch %d (val accuracy %.4f)", description,
                         result.best_epoch, best_acc)
        finally:
            model.train(was_training)
    if result.best_epoch is None:
        result.best_epoch = result.epochs_run
    return result


EXPLODE_FACTOR = 100.0
"""A step loss above this many times the first step's loss (at least 0.1) counts as divergence."""


def _check_loss(value: float, first: float | None, x: Any, cfg: FinetuneConfig, description: str,
                epoch: int, step: int) -> float:
    """Raise when a step's loss is NaN/inf or exploded; return the reference (the first step's) loss.
    A non-finite loss on non-finite inputs is the data's fault, and is said so."""
    if not math.isfinite(value):
        tensors = x if isinstance(x, (tuple, list)) else (x,)
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
               for t in tensors):
            raise DataError(f"{description}: the training data holds NaN or infinite values "
                            f"(a batch of epoch {epoch}, step {step}); the loss became {value}.",
                            hint="Clean or impute the dataset (e.g. torch.nan_to_num) before compressing.")
        raise DivergenceError(f"{description}: the loss became {value} at step {step} of epoch {epoch}; "
                              "training diverged and this stage was stopped.",
                              hint=f"Lower lr (now {cfg.lr:g}), set grad_clip, or use amp='off'.")
    if first is None:
        return value
    if value > EXPLODE_FACTOR * max(first, 0.1):
        raise DivergenceError(f"{description}: the loss exploded to {value:.4g} at step {step} of epoch {epoch} "
                              f"(it started at {first:.4g}); training diverged and this stage was stopped.",
                              hint=f"Lower lr (now {cfg.lr:g}) or set grad_clip.")
    return first


@register_pass(FinetuneConfig, needs=("train_loader",), default=True)
def finetune_pass(model: nn.Module, cfg: FinetuneConfig, ctx: PassContext) -> nn.Module:
    """The ``finetune`` pass: :func:`train_model` on ``ctx.train_loader``/``ctx.val_loader`` with
    ``ctx.seed``; its record is the :class:`TrainResult` (``ctx.extras["train_result"]``)."""
    ctx.add(train_model(model, ctx.train_loader, cfg, val_loader=ctx.val_loader, seed=ctx.seed))
    return model
