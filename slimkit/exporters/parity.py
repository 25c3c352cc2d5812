"""Parity: run the exported ONNX file in onnxruntime (CPU) and the PyTorch model on the same inputs and
compare the outputs in fp32."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from slimkit.errors import ExportError

log = logging.getLogger(__name__)

__all__ = ["check_parity"]


def check_parity(model: nn.Module, onnx_path: str | os.PathLike[str], inputs: Any, *, atol: float = 1e-3,
                 rtol: float = 1e-3, strict: bool = False) -> dict[str, Any]:
    """Compare ``model`` (run in fp32 eval mode) with the ONNX file on ``inputs`` (a tensor or tuple).

    All outputs are compared when both sides have the same number of tensors, else the primary output.
    Returns ``{"max_abs_diff", "mean_abs_diff", "cosine", "ok"}``; ``ok`` means every element satisfies
    ``|onnx - torch| <= atol + rtol * |torch|``. ``strict`` raises ExportError when not ok."""
    from slimkit.evaluation.latency import ort_feed, ort_session
    from slimkit.evaluation.metrics import call_model, eval_mode, flatten_outputs, primary_output

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    with eval_mode(model), torch.no_grad():
        ref_out = call_model(model, inputs, next(iter(model.parameters()), torch.empty(0)).device)
    session = ort_session(onnx_path, threads=1)
    ort_outs = [torch.from_numpy(o) for o in session.run(None, ort_feed(session, inputs))]
    ref_list = flatten_outputs(ref_out)
    if len(ref_list) != len(ort_outs):
        ref_list, ort_outs = [primary_output(ref_out)], ort_outs[:1]
    max_abs = 0.0
    total_abs = 0.0
    count = 0
    ok = True
    a_all, b_all = [], []
    for ref, got in zip(ref_list, ort_outs, strict=True):
        ref64 = ref.detach().cpu().double()
        got64 = got.double()
        if tuple(ref64.shape) != tuple(got64.shape):
            result = {"max_abs_diff": None, "mean_abs_diff": None, "cosine": None, "ok": False}
            if strict:
                raise ExportError(f"ONNX output shape {tuple(got64.shape)} != PyTorch {tuple(ref64.shape)} "
                                  f"for inputs {[tuple(t.shape) for t in inputs]}.",
                                  hint="Check the dynamic batch dimension of the export.")
            return result
        if ref.is_floating_point() or got.is_floating_point():
            diff = (got64 - ref64).abs()
            if diff.numel():
                max_abs = max(max_abs, float(diff.max()))
                total_abs += float(diff.sum())
                count += diff.numel()
            ok = ok and bool(torch.all(diff <= atol + rtol * ref64.abs()))
            a_all.append(got64.reshape(-1))
            b_all.append(ref64.reshape(-1))
        else:
            ok = ok and bool(torch.equal(got64, ref64))
    cosine = None
    if a_all:
        a, b = torch.cat(a_all), torch.cat(b_all)
        denom = float(a.norm() * b.norm())
        cosine = float((a @ b) / denom) if denom > 0 else (1.0 if float(a.norm()) == float(b.norm()) else 0.0)
    result = {"max_abs_diff": max_abs, "mean_abs_diff": total_abs / count if count else 0.0,
              "cosine": cosine, "ok": ok}
    log.info("parity %s: max |diff| %.3g, mean %.3g, cosine %s", onnx_path, max_abs, result["mean_abs_diff"], cosine)
    if strict and not ok:
        raise ExportError(f"the ONNX model does not match PyTorch: max |diff| {max_abs:.3g}, "
                          f"mean {result['mean_abs_diff']:.3g}, cosine {cosine} (atol {atol}, rtol {rtol}).",
                          hint="Look for ops the exporter translates differently, or loosen the tolerance "
                               "(export.onnx.parity_atol in a recipe, --atol for slimkit export) if the difference is "
                               "expected.")
    return result
