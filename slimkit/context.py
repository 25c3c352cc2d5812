"""What a pass may need besides the model and its config."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class PassContext:
    """Inputs a pass may use. Verbs build one from keyword arguments; the runner builds one from the recipe.

    example_inputs: a tuple of tensors the model accepts (for tracing, MACs and export).
    calibration: an iterable of batches for observers and importance (``x``, ``(x, y)`` or a Hugging Face
        dict; the one convention is :mod:`slimkit.data.batch`).
    train_loader / val_loader: labelled batches (``(x, y)`` or a dict with ``labels``) for fine-tuning and
        distillation.
    teacher: the model before compression (the runner sets it), used by distillation.
    """

    example_inputs: tuple[torch.Tensor, ...] | None = None
    calibration: Iterable[Any] | None = None
    train_loader: Iterable[Any] | None = None
    val_loader: Iterable[Any] | None = None
    teacher: nn.Module | None = None
    num_classes: int | None = None
    seed: int = 0
    workdir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def require(self, *names: str, pass_name: str = "this pass") -> None:
        from slimkit.errors import ConfigError

        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{pass_name} needs {', '.join(missing)} but none was given.",
                hint="Pass it as a keyword argument (e.g. calibration=loader) or give the recipe a data section.",
            )


def model_device(model: Any) -> torch.device:
    """The device of a module's first parameter or buffer; CPU for a module without any and for any other
    callable (an ONNX session wrapper, a function)."""
    if not isinstance(model, nn.Module):
        return torch.device("cpu")
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each module's own training flag after (also when
    the block raises). Anything that is not an ``nn.Module`` passes through."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
