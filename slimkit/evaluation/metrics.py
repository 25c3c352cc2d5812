"""Quality metrics: classification accuracy/precision/recall/F1 and fidelity to a reference model.

Models run in eval mode under ``torch.no_grad()``; every module's training flag is restored afterwards.
A model may return a tensor, a tuple/list, a dict or a Hugging Face ``ModelOutput``: the *primary
output* is ``last_hidden_state`` when present (embedding models) or ``logits``, else the first tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from slimkit.context import eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import DataError
from slimkit.evaluation.agreement import argmax_agreement, row_cosine

log = logging.getLogger(__name__)

__all__ = [
    "call_model", "classification_metrics", "eval_mode", "fidelity", "flatten_outputs", "primary_output",
    "split_batch",
]


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """All tensors of a model output, in order (tensor, tuple/list, dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):  # dict and transformers ModelOutput (an OrderedDict)
        items: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    else:
        return []
    tensors: list[torch.Tensor] = []
    for item in items:
        tensors.extend(flatten_outputs(item))
    return tensors


def primary_output(out: Any) -> torch.Tensor:
    """The tensor that stands for a model's output: ``last_hidden_state`` or ``logits`` when the output
    is a mapping that has them, otherwise the first tensor found."""
    if isinstance(out, Mapping):
        for key in ("last_hidden_state", "logits"):
            value = out.get(key)
            if isinstance(value, torch.Tensor):
                return value
    tensors = flatten_outputs(out)
    if not tensors:
        raise DataError(f"the model returned {type(out).__name__}, which holds no tensor.",
                        hint="Return a tensor, a tuple/dict of tensors or a ModelOutput.")
    return tensors[0]


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def classification_metrics(model: Any, loader: Iterable[Any]) -> dict[str, float]:
    """Accuracy (a fraction in [0, 1]) and macro precision, recall and F1 (scikit-learn, zero_division=0)
    of ``argmax(primary output, -1)`` against the labels of ``loader``'s ``(x, y)`` batches."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from slimkit.progress import track

    device = model_device(model)
    preds: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with eval_mode(model), torch.no_grad(), track("evaluate", total=_loader_len(loader)) as task:
        for batch in loader:
            x, y = split_batch(batch, labelled=True)
            logits = primary_output(call_model(model, x, device))
            preds.append(logits.argmax(dim=-1).reshape(-1).cpu())
            labels.append(torch.as_tensor(y).reshape(-1).cpu())
            task.advance()
    if not preds:
        raise DataError("the evaluation loader yielded no batches.", hint="Check the data split and its size.")
    y_pred = torch.cat(preds).numpy()
    y_true = torch.cat(labels).numpy()
    if y_pred.shape != y_true.shape:
        raise DataError(f"{y_pred.shape[0]} predictions for {y_true.shape[0]} labels.",
                        hint="The model should return one row of class scores per sample.")
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def _input_batches(loader_or_inputs: Any) -> Iterable[Any]:
    """The model inputs of a loader, or of one batch. A tensor or a tuple/list of tensors is one batch of
    inputs; anything else is a loader whose batches go through :func:`slimkit.data.batch.split_batch`."""
    if isinstance(loader_or_inputs, torch.Tensor):
        return [loader_or_inputs]
    if isinstance(loader_or_inputs, (tuple, list)) and loader_or_inputs and all(
            isinstance(t, torch.Tensor) for t in loader_or_inputs):
        return [tuple(loader_or_inputs)]
    return (split_batch(batch)[0] for batch in loader_or_inputs)


def fidelity(model: Any, reference: Any, loader_or_inputs: Any) -> dict[str, float | None]:
    """How closely ``model`` follows ``reference`` on the same inputs.

    ``cosine`` is the mean, ``cosine_min`` the minimum over samples of the cosine similarity between the
    two flattened primary outputs (logits or embeddings); ``top1_agreement`` is the fraction of samples
    whose argmax agrees, computed only for 2-D ``[N, classes]`` outputs (else None).
    """
    device_m, device_r = model_device(model), model_device(reference)
    cosines: list[torch.Tensor] = []
    agree: list[torch.Tensor] = []
    two_d = True
    with eval_mode(model), eval_mode(reference), torch.no_grad():
        for x in _input_batches(loader_or_inputs):
            a = primary_output(call_model(model, x, device_m)).detach().float().cpu()
            b = primary_output(call_model(reference, x, device_r)).detach().float().cpu()
            if a.shape != b.shape:
                raise DataError(f"model output {tuple(a.shape)} and reference output {tuple(b.shape)} differ.",
                                hint="Fidelity compares outputs of the same shape.")
            cosines.append(row_cosine(a, b))
            two_d = two_d and a.dim() == 2 and a.shape[1] > 1
            if two_d:
                agree.append((argmax_agreement(a, b), len(a)))
    if not cosines:
        raise DataError("fidelity got no inputs.", hint="Give a loader or example inputs.")
    cos_all = np.concatenate(cosines)
    top1 = sum(f * n for f, n in agree) / sum(n for _, n in agree) if two_d and agree else None
    return {"cosine": float(cos_all.mean()), "cosine_min": float(cos_all.min()), "top1_agreement": top1}
