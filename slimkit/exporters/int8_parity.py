"""Agreement of a quantized (int8/fp16) ONNX model with a reference: the PyTorch fake-quant model (tight, same
scales) or the fp32 model / fp32 ONNX (looser). Reports max/mean absolute difference, cosine similarity and
top-1 agreement; raises ExportError when asked floors are not met."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.context import eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ExportError
from slimkit.evaluation.agreement import argmax_agreement, row_cosine
from slimkit.evaluation.latency import ort_session
from slimkit.evaluation.metrics import primary_output


def batch_arrays(batch: Any) -> list[np.ndarray]:
    """The model inputs of one batch (``x``, ``(x, y)``, ``(x,)`` or a mapping; see slimkit.data.batch) as
    numpy arrays in input order, for onnxruntime feeds."""
    inputs, _ = split_batch(batch)
    if isinstance(inputs, Mapping):
        return [_np(v) for v in inputs.values()]
    if isinstance(inputs, (tuple, list)):
        return [_np(t) for t in inputs]
    return [_np(inputs)]


def _np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.float().numpy() if t.is_floating_point() else t.numpy()
    return np.asarray(t)


def ort_kernel_counts(path: str | Path) -> dict[str, int]:
    """Op types of the graph onnxruntime actually runs (CPU, all graph optimizations, i.e. after QDQ fusion):
    how many convolutions became QLinearConv, how many Quantize/Dequantize nodes stayed, ..."""
    import tempfile
    from collections import Counter

    import onnx

    with tempfile.TemporaryDirectory(prefix="slimkit-ortopt-") as td:
        optimized = Path(td) / "optimized.onnx"
        ort_session(path, optimized_path=optimized)
        proto = onnx.load(str(optimized), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def ort_predict(path_or_session: Any, batches: Iterable[Any]) -> np.ndarray:
    """Run an ONNX model (path or session) over batches (``x``, ``(x, y)`` or tuples of inputs) and return
    the concatenated first output."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session, threads=1)
    names = [i.name for i in sess.get_inputs()]
    outs = []
    for batch in batches:
        arrays = batch_arrays(batch)
        outs.append(sess.run(None, {n: a.astype(np.float32) if a.dtype == np.float64 else a
                                    for n, a in zip(names, arrays, strict=False)})[0])
    return np.concatenate(outs, axis=0)


def _torch_predict(model: nn.Module, batches: Iterable[Any]) -> np.ndarray:
    outs = []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            out = primary_output(call_model(model, split_batch(batch)[0], model_device(model)))
            outs.append(out.float().cpu().numpy())
    return np.concatenate(outs, axis=0)


def compare_outputs(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max/mean absolute difference, cosine similarity (flattened over the set and per sample, min) and top-1
    agreement (argmax over the last axis) between two output arrays of the same shape."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise ExportError(f"output shapes differ: ONNX {out.shape} vs reference {ref.shape}.")
    diff = np.abs(out - ref)
    cos = float(row_cosine(out.reshape(1, -1), ref.reshape(1, -1))[0])  # over the whole set
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "cosine": cos,
            "cosine_min": float(row_cosine(out, ref).min()), "top1_agreement": argmax_agreement(out, ref),
            "n": int(len(out))}


def int8_parity(onnx_path: str | Path, reference: nn.Module | str | Path, inputs: Any, *,
                atol: float | None = None, min_top1: float | None = None,
                min_cosine: float | None = None) -> dict[str, float]:
    """Compare a quantized ONNX model with a reference: the PyTorch fake-quant model (tight: same scales, so
    only rounding of requantization differs) or the fp32 model / fp32 ONNX (looser tolerance).

    ``inputs`` is a tensor or an iterable of batches. Returns :func:`compare_outputs`' numbers; raises
    ExportError listing them when ``atol``, ``min_top1`` or ``min_cosine`` is given and not met."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    out = ort_predict(onnx_path, batches)
    if isinstance(reference, nn.Module):
        ref = _torch_predict(reference, batches)
    else:
        ref = ort_predict(reference, batches)
    stats = compare_outputs(out, ref)
    failed = []
    if atol is not None and stats["max_abs_diff"] > atol:
        failed.append(f"max abs diff {stats['max_abs_diff']:.4g} > atol {atol:g}")
    if min_top1 is not None and stats["top1_agreement"] < min_top1:
        failed.append(f"top-1 agreement {stats['top1_agreement']:.3f} < {min_top1:g}")
    if min_cosine is not None and stats["cosine"] < min_cosine:
        failed.append(f"cosine {stats['cosine']:.4f} < {min_cosine:g}")
    if failed:
        raise ExportError(f"int8 parity check failed for {onnx_path}: {'; '.join(failed)} "
                          f"(over {stats['n']} samples).",
                          hint="Calibrate with more representative data, try calibrate_method='percentile' or "
                               "'entropy', keep sensitive layers in float (nodes_to_exclude), or use QAT.")
    return stats
