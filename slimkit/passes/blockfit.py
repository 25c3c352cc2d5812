"""Block reconstruction: refit the blocks of a compressed model to the original model's block outputs on
unlabelled calibration data (``block_refit:`` of the post-training passes; ``BlockRefitConfig``).

One block at a time, in the order the blocks run: the compressed model's inputs to the block and the
original model's output of the same block are captured over the calibration batches (a forward of each model
stopped right after that block), then the block's parameters are fit with Adam to the relative squared error
``sum(m (y - t)^2) / sum(m t^2)`` (``m``: the token mask of a batch with an ``attention_mask``, else 1), one
batch per step. Zeros of the compressed weights (sparsity) are put back after every step; shapes never change.
Every ``holdout``-th batch is kept out of the fit: the refit of a block is kept only when the error on those
batches went down, so a refit that overfits the calibration data is undone. A block whose output lost channels
(structured pruning of its output) cannot be compared with the original's and is left as is; the block after it
is fit on its output. Only the block being fit is in
memory with its inputs and targets (not the whole model's activations).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.analysis.calibration import StopForward, block_of, execution_order, token_mask
from slimkit.config.posttrain import BlockRefitConfig
from slimkit.context import eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError, DataError
from slimkit.evaluation.metrics import primary_output

log = logging.getLogger(__name__)


def default_blocks(model: nn.Module, example: Any) -> list[str]:
    """The indexed blocks of ``model`` (``block_of`` of every ``Linear``/``Conv2d``) in the order they run on
    ``example`` (a batch's inputs); blocks that do not run are left out."""
    names: list[str] = []
    for name, mod in model.named_modules():
        block = block_of(name)
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and block not in names and any(p.isdigit() for p in block.split(".")):
            names.append(block)
    return execution_order(model, names, example, only_called=True)


def _first(out: Any) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"block_refit: a block returned {type(out).__name__}, not a tensor.",
                          hint="Name blocks that return a tensor (or a tuple starting with one) in block_refit.blocks.")
    return out


def _capture(model: nn.Module, name: str, batches: list[Any], what: str) -> list[Any]:
    """Per batch: the block's (args, kwargs) (``what="inputs"``) or its primary output (``"output"``)."""
    block = model.get_submodule(name)
    got: list[Any] = []

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        got.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))
        raise StopForward

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        got.append(_first(out).detach())
        raise StopForward

    handle = (block.register_forward_pre_hook(pre, with_kwargs=True) if what == "inputs"
              else block.register_forward_hook(post))
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for b in batches:
                n = len(got)
                try:
                    call_model(model, b, device)
                except StopForward:
                    pass
                if len(got) != n + 1:
                    raise ConfigError(f"block_refit: block '{name}' did not run on a calibration batch.",
                                      hint="Name blocks that run on every input in block_refit.blocks.")
    finally:
        handle.remove()
    return got


def _error(block: nn.Module, ins: list[Any], outs: list[torch.Tensor], masks: list[torch.Tensor | None],
           idx: Iterable[int]) -> float:
    num = den = 0.0
    with torch.no_grad():
        for i in idx:
            args, kwargs = ins[i]
            n, d = _terms(_first(block(*args, **kwargs)), outs[i], masks[i])
            num, den = num + float(n), den + float(d)
    return num / max(den, 1e-30)


def _terms(y: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    err, ref = (y.float() - t.float()).pow(2), t.float().pow(2)
    if mask is not None and y.dim() == 3 and tuple(mask.shape) == tuple(y.shape[:2]):
        m = mask.to(err)[..., None]
        err, ref = err * m, ref * m
    return err.sum(), ref.sum()


def _split(calibration: Iterable[Any], cfg: BlockRefitConfig) -> tuple[list[Any], list[int], list[int]]:
    """The calibration inputs and the indices of the fit and the held-out batches."""
    batches = [split_batch(b)[0] for b in itertools.islice(iter(calibration), cfg.batches)]
    if len(batches) < 2:
        raise DataError(f"block_refit needs at least 2 calibration batches (one to fit, one to check); got "
                        f"{len(batches)}.", hint="Give more calibration data.")
    held = [i for i in range(len(batches)) if i % cfg.holdout == cfg.holdout - 1] or [len(batches) - 1]
    return batches, [i for i in range(len(batches)) if i not in held], held


def refit_output(model: nn.Module, original: nn.Module, calibration: Iterable[Any], cfg: BlockRefitConfig,
                 *, seed: int = 0) -> dict[str, Any]:
    """Only the final, whole-model step of ``refit_blocks`` (``cfg.final_steps`` Adam steps on ``model``'s output
    against ``original``'s, zeros kept, the best held-out state kept); returns its row."""
    if not cfg.final_steps:
        raise ConfigError("refit_output needs block_refit.final_steps > 0.", hint="Set final_steps, e.g. 200.")
    batches, fit, held = _split(calibration, cfg)
    return _refit_model(model, original, batches, fit, held, [token_mask(b) for b in batches], cfg,
                        torch.Generator().manual_seed(seed))


def refit_blocks(model: nn.Module, original: nn.Module, calibration: Iterable[Any], cfg: BlockRefitConfig,
                 *, seed: int = 0) -> list[dict[str, Any]]:
    """Refit ``model``'s blocks in place to ``original``'s block outputs (module docstring). ``original`` is
    not changed. Returns one row per block: its name, the relative error on the fit and held-out batches
    before and after, whether the refit was kept, and the seconds it took."""
    batches, fit, held = _split(calibration, cfg)
    names = cfg.blocks or default_blocks(model, batches[0])
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or n not in dict(original.named_modules())]
    if missing:
        raise ConfigError(f"block_refit.blocks: {missing[:5]} are not modules of both models.",
                          hint="Name blocks by their module path, e.g. encoder.layer.0.")
    masks = [token_mask(b) for b in batches]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in names:
        t0 = time.time()
        block = model.get_submodule(name)
        ins = _capture(model, name, batches, "inputs")
        outs = _capture(original, name, batches, "output")
        with eval_mode(block), torch.no_grad():
            same = _first(block(*ins[0][0], **ins[0][1])).shape == outs[0].shape
        if not same:
            # its output channels were removed: nothing to compare with; the next block's refit sees its output
            rows.append({"block": name, "kept": False, "skipped": "output shape differs from the original's",
                         "seconds": round(time.time() - t0, 2)})
            continue
        params = [p for p in block.parameters() if p.dtype.is_floating_point]
        zeros = {id(p): p != 0 for p in params if p.dim() > 1 and bool((p == 0).any())}
        saved = copy.deepcopy(block.state_dict())
        before = (_error(block, ins, outs, masks, fit), _error(block, ins, outs, masks, held))
        flags = [(p, p.requires_grad) for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = _scheduler(opt, cfg.schedule, cfg.steps)
        try:
            with eval_mode(block), torch.enable_grad():
                for _ in range(cfg.steps):
                    i = fit[int(torch.randint(len(fit), (1,), generator=gen))]
                    args, kwargs = ins[i]
                    num, den = _terms(_first(block(*args, **kwargs)), outs[i], masks[i])
                    opt.zero_grad(set_to_none=True)
                    (num / den.clamp_min(1e-30)).backward()
                    opt.step()
                    sched.step()
                    _keep_zeros(params, zeros)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
        after = (_error(block, ins, outs, masks, fit), _error(block, ins, outs, masks, held))
        kept = after[1] < before[1]
        if not kept:
            block.load_state_dict(saved)
        rows.append({"block": name, "error_before": round(before[0], 6), "error_after": round(after[0], 6),
                     "heldout_before": round(before[1], 6), "heldout_after": round(after[1], 6),
                     "kept": kept, "seconds": round(time.time() - t0, 2)})
        log.info("block_refit %s: held-out error %.4g -> %.4g (%s)", name, before[1], after[1],
                 "kept" if kept else "undone")
        del ins, outs
    if cfg.final_steps:
        rows.append(_refit_model(model, original, batches, fit, held, masks, cfg, gen))
    return rows


def _scheduler(opt: torch.optim.Optimizer, schedule: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _keep_zeros(params: list[torch.Tensor], zeros: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for p in params:
            if id(p) in zeros:
                p.mul_(zeros[id(p)])


def _model_error(model: nn.Module, batches: list[Any], outs: list[torch.Tensor], masks: list[torch.Tensor | None],
                 idx: Iterable[int]) -> float:
    num = den = 0.0
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for i in idx:
            n, d = _terms(primary_output(call_model(model, batches[i], device)), outs[i], masks[i])
            num, den = num + float(n), den + float(d)
    return num / max(den, 1e-30)


def _refit_model(model: nn.Module, original: nn.Module, batches: list[Any], fit: list[int], held: list[int],
                 masks: list[torch.Tensor | None], cfg: BlockRefitConfig, gen: torch.Generator) -> dict[str, Any]:
    """The end-to-end step after the blocks (``cfg.final_steps``): every floating parameter of ``model`` fit
    with Adam to the relative squared error of its output (``primary_output``: the last hidden state, logits)
    against ``original``'s on the fit batches, zeros kept; every ``final_check`` steps the held-out batches are
    measured and the best state is kept (the fit stops after 3 checks without improvement; the state before the
    fit when none improved)."""
    t0 = time.time()
    device = model_device(model)
    with eval_mode(original), torch.no_grad():
        outs = [primary_output(call_model(original, b, model_device(original))).detach() for b in batches]
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    zeros = {id(p): p != 0 for p in params if p.dim() > 1 and bool((p == 0).any())}
    before = (_model_error(model, batches, outs, masks, fit), _model_error(model, batches, outs, masks, held))
    best, best_state, bad, done = before[1], copy.deepcopy(model.state_dict()), 0, 0
    flags = [(p, p.requires_grad) for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.final_lr or cfg.lr)
    sched = _scheduler(opt, cfg.schedule, cfg.final_steps)
    try:
        for step in range(1, cfg.final_steps + 1):
            i = fit[int(torch.randint(len(fit), (1,), generator=gen))]
            with eval_mode(model), torch.enable_grad():
                num, den = _terms(primary_output(call_model(model, batches[i], device)), outs[i], masks[i])
                opt.zero_grad(set_to_none=True)
                (num / den.clamp_min(1e-30)).backward()
            opt.step()
            sched.step()
            _keep_zeros(params, zeros)
            done = step
            if step % cfg.final_check == 0 or step == cfg.final_steps:
                err = _model_error(model, batches, outs, masks, held)
                if err < best:
                    best, best_state, bad = err, copy.deepcopy(model.state_dict()), 0
                else:
                    bad += 1
                    if bad >= 3:
                        break
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        opt.zero_grad(set_to_none=True)
    model.load_state_dict(best_state)
    after = (_model_error(model, batches, outs, masks, fit), best)
    kept = after[1] < before[1]
    log.info("block_refit final (whole model): held-out error %.4g -> %.4g after %d steps", before[1], after[1], done)
    return {"block": "(whole model)", "error_before": round(before[0], 6), "error_after": round(after[0], 6),
            "heldout_before": round(before[1], 6), "heldout_after": round(after[1], 6), "kept": kept,
            "steps": done, "seconds": round(time.time() - t0, 2)}


def refit_note(rows: list[dict[str, Any]], stage: int) -> list[str]:
    """The report note of a stage's block refit (none when there was none)."""
    if not rows:
        return []
    kept = [r for r in rows if r["kept"]]
    fitted = [r for r in rows if "skipped" not in r]
    if not fitted:
        return [f"Block refit (stage {stage}): no block could be compared with the original's."]
    worst = max(fitted, key=lambda r: r["heldout_after"] if r["kept"] else r["heldout_before"])
    err = worst["heldout_after"] if worst["kept"] else worst["heldout_before"]
    return [f"Block refit (stage {stage}): {len(kept)} of {len(rows)} blocks refit to the original's outputs on "
            f"the calibration data (the others did not improve on the held-out batches); largest held-out "
            f"relative error {err:.3g} ({worst['block']}), {sum(r['seconds'] for r in rows):.0f} s."]


__all__ = ["default_blocks", "refit_blocks", "refit_note", "refit_output"]
