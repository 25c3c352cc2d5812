"""Deep mutual learning (Zhang et al., 2018): two peers learn together, each from the labels and from the
other's softened predictions. Both peers are updated in one optimizer step on the summed losses; the
targets are detached, so no gradient crosses between them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.config.distill import DistillConfig
from slimkit.passes.distill.losses import mutual_losses


class PeerPair(nn.Module):
    """Holds two peers so one optimizer trains both; ``forward`` is peer ``a``'s (so validation accuracy
    during training is peer ``a``'s)."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.a(*args, **kwargs)


def mutual_loss_fn(cfg: DistillConfig) -> Any:
    """A ``loss_fn(pair, x, y)`` for :func:`slimkit.passes.finetune.loop.train_model` on a :class:`PeerPair`."""
    from slimkit.data.batch import call_model
    from slimkit.passes.finetune.loop import logits_of

    def loss_fn(pair: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
        la = logits_of(call_model(pair.a, x))
        lb = logits_of(call_model(pair.b, x))
        loss_a, loss_b = mutual_losses(la, lb, y, cfg.temperature, cfg.alpha)
        return loss_a + loss_b

    return loss_fn


def mutual_learning(a: nn.Module, b: nn.Module, train_loader: Iterable[Any], cfg: DistillConfig, *,
                    val_loader: Iterable[Any] | None = None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Train peers ``a`` and ``b`` together in place with ``cfg`` (temperature, alpha, epochs, lr, ...)
    and return them. With a ``val_loader`` and ``keep_best``, the epoch with the best accuracy of ``a`` is
    kept (for both peers)."""
    from slimkit.config.distill import finetune_config
    from slimkit.passes.finetune.loop import train_model

    pair = PeerPair(a, b)
    train_model(pair, train_loader, finetune_config(cfg), val_loader=val_loader, loss_fn=mutual_loss_fn(cfg),
                seed=seed, description="mutual learning")
    return a, b
