"""What a batch is, decided once: every consumer of loaders (evaluation, calibration, fine-tuning, distillation,
onnxruntime calibration and parity) splits batches with :func:`split_batch` and calls models with
:func:`call_model`.

A batch is one of

- ``x``: the model input alone (a tensor);
- ``(x, y)`` or ``[x, y]``: the input and its target; ``x`` may itself be a tuple of tensors for a model
  with several positional inputs, ``((x1, x2), y)``;
- ``(x,)``: the input alone, as a one-tensor ``TensorDataset`` yields it;
- a mapping (Hugging Face style): ``labels`` (or ``label``/``y``) is the target, the other entries are the
  model's keyword inputs; a mapping holding only ``x`` (or only ``input``) besides the label is that tensor.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from slimkit.errors import DataError

LABEL_KEYS = ("labels", "label", "y")
"""Keys of a batch mapping that hold the target, looked up in this order."""
_SINGLE_INPUT_KEYS = ("x", "input")

__all__ = ["LABEL_KEYS", "batch_fingerprint", "call_model", "positional_inputs", "split_batch"]


def split_batch(batch: Any, *, labelled: bool = False) -> tuple[Any, Any]:
    """``(inputs, target)`` of one batch (see the module docstring); ``target`` is None when the batch has
    none. With ``labelled=True`` a batch without a target raises DataError (training and accuracy need it).
    A tuple of any other length, an empty mapping or a mapping holding only a label raises DataError."""
    target: Any = None
    if isinstance(batch, Mapping):
        data = dict(batch)
        for key in LABEL_KEYS:
            if key in data:
                target = data.pop(key)
                break
        if not data:
            raise DataError(f"a batch mapping with keys {sorted(batch)} holds no model input.",
                            hint="Yield a dict of the model's keyword inputs, with the target under 'labels'.")
        only = next(iter(data)) if len(data) == 1 else None
        inputs = data[only] if only in _SINGLE_INPUT_KEYS else data
    elif isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            inputs, target = batch[0], batch[1]
        elif len(batch) == 1:
            inputs = batch[0]
        else:
            raise DataError(f"a batch is x, (x, y) or a mapping; got a {type(batch).__name__} of length {len(batch)}.",
                            hint="Group several model inputs as ((x1, x2), y), or yield a dict of keyword inputs.")
    else:
        inputs = batch
    if labelled and target is None:
        what = f"a mapping with keys {sorted(batch)}" if isinstance(batch, Mapping) else (
            f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
        raise DataError(f"expected a labelled batch (x, y), got {what}.",
                        hint="Yield (inputs, labels) tuples or a dict with a 'labels' key.")
    return inputs, target


def call_model(model: Any, inputs: Any, device: torch.device | None = None) -> Any:
    """Call ``model`` on ``inputs`` (a tensor, or a tuple/list of tensors passed positionally, or a dict
    passed as keywords), moving tensors to ``device`` first."""
    def move(t: Any) -> Any:
        return t.to(device) if device is not None and isinstance(t, torch.Tensor) else t

    if isinstance(inputs, Mapping):
        return model(**{k: move(v) for k, v in inputs.items()})
    if isinstance(inputs, (tuple, list)):
        return model(*[move(t) for t in inputs])
    return model(move(inputs))


def positional_inputs(model: Any, inputs: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Keyword ``inputs`` as a positional tuple for ``model.forward``, when they are exactly its first
    positional parameters (in its order: ``{"attention_mask", "input_ids"}`` -> ``(input_ids, attention_mask)``
    for a Hugging Face BERT or a SentenceEncoder); None when they are not (then the model needs keywords)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][: len(inputs)]
    if len(names) != len(inputs) or set(names) != set(inputs):
        return None
    return tuple(inputs[n] for n in names)


def batch_fingerprint(batch: Any) -> str:
    """A digest of a batch's exact contents: every tensor's dtype, shape and bytes (BLAKE2b, 128 bits), walked
    through tuples, lists and mappings (keys included); other leaves by their type and ``repr``. Two batches
    with the same fingerprint hold the same values."""
    h = hashlib.blake2b(digest_size=16)

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy() if t.dtype != torch.bool else t.numpy())
        elif isinstance(x, Mapping):
            h.update(f"M{len(x)}".encode())
            for k, v in x.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(x, (tuple, list)):
            h.update(f"S{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"{type(x).__name__}:{x!r}".encode())

    walk(batch)
    return h.hexdigest()
