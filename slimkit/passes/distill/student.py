"""Students for distillation.

- :func:`copy_student`: a deep copy of the teacher, to compress (prune, factorize, quantize) and then distil
  back from the original.
- :func:`arch_student`: a smaller built-in architecture (``cnn-small``, ``mlp``, ``resnet-mini``, ...).
- :func:`layer_student`: for Hugging Face BERT-like encoders, a copy that keeps every k-th transformer layer,
  initialized from the teacher's layers (as DistilBERT does).
- :func:`make_student`: one entry point for the three.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from slimkit.errors import ConfigError

log = logging.getLogger(__name__)

_LAYER_LISTS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "h", "block")


def copy_student(teacher: nn.Module) -> nn.Module:
    """A deep copy of ``teacher`` in training mode with every parameter trainable."""
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    return student.train()


def arch_student(arch: str, *, input_shape: Sequence[int], num_classes: int, seed: int = 0,
                 **kwargs: Any) -> nn.Module:
    """A freshly initialized built-in architecture, e.g. ``arch_student("cnn-small", input_shape=(1, 28, 28),
    num_classes=10, widths=[8, 16])``."""
    from slimkit.models import build_model

    return build_model({"arch": arch, "kwargs": kwargs}, input_shape=input_shape, num_classes=num_classes,
                       seed=seed)


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer layers (``encoder.layer`` in BERT, ``transformer.layer`` in
    DistilBERT, ...): the longest ModuleList whose name ends like one of those."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        if any(name == s or name.endswith("." + s) for s in _LAYER_LISTS):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ConfigError(f"cannot find the transformer layers of a {type(model).__name__}.",
                          hint="layer_student works on BERT-like encoders with an `encoder.layer` ModuleList.")
    return best


def keep_indices(n_layers: int, every: int) -> list[int]:
    """Every ``every``-th layer counted back from the last, so the last layer is always kept
    (6 layers, every=2 -> [1, 3, 5]; 12 layers, every=3 -> [2, 5, 8, 11])."""
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}.")
    return list(range(n_layers - 1, -1, -every))[::-1]


def layer_student(teacher: nn.Module, *, every: int = 2, layers: Sequence[int] | None = None) -> nn.Module:
    """A copy of a BERT-like encoder with fewer layers, each initialized from a teacher layer.

    ``layers`` lists the teacher layer indices to keep (in order); by default :func:`keep_indices`.
    Embeddings, pooler and heads are copied; ``config.num_hidden_layers`` is updated when present.
    """
    student = copy_student(teacher)
    name, layer_list = find_layer_list(student)
    n = len(layer_list)
    idx = list(layers) if layers is not None else keep_indices(n, every)
    if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        raise ConfigError(f"layers must be distinct indices in [0, {n}), got {idx}.")
    new = nn.ModuleList(layer_list[i] for i in idx)
    student.set_submodule(name, new)
    for i, layer in enumerate(new):  # attention modules of newer transformers carry their layer index
        for m in layer.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = i
    cfg = getattr(student, "config", None)
    if cfg is not None and hasattr(cfg, "num_hidden_layers"):
        cfg.num_hidden_layers = len(idx)
        if hasattr(cfg, "layer_types") and isinstance(cfg.layer_types, list) and len(cfg.layer_types) == n:
            cfg.layer_types = [cfg.layer_types[i] for i in idx]
    log.info("layer_student: kept teacher layers %s of %d", idx, n)
    return student


def make_student(teacher: nn.Module, kind: str = "copy", **kwargs: Any) -> nn.Module:
    """``kind``: ``copy`` (:func:`copy_student`), ``arch`` (:func:`arch_student`, kwargs: arch, input_shape,
    num_classes, arch kwargs) or ``layers`` (:func:`layer_student`, kwargs: every or layers)."""
    if kind == "copy":
        return copy_student(teacher)
    if kind == "arch":
        if "arch" not in kwargs:
            raise ConfigError("make_student(kind='arch') needs arch=..., e.g. arch='cnn-small'.")
        return arch_student(kwargs.pop("arch"), **kwargs)
    if kind == "layers":
        return layer_student(teacher, **kwargs)
    raise ConfigError(f"unknown student kind {kind!r}; expected 'copy', 'arch' or 'layers'.")
