"""N:M semi-structured sparsity (2:4 by default).

In every run of ``m`` consecutive weights along the input dimension, the ``n`` largest magnitudes are kept
and the rest set to zero, so NVIDIA sparse tensor cores can skip them. The mask is applied to the weights in
place (no extra parameters, so saving and export work unchanged). :func:`gpu_speed_check` measures the
speed-up with ``torch.sparse.to_sparse_semi_structured`` on a CUDA GPU, and says why when it cannot.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from slimkit.config.layers import is_skipped
from slimkit.config.structured import NMSparsityConfig
from slimkit.context import PassContext
from slimkit.errors import ConfigError
from slimkit.evaluation.latency import cuda_latency_forms
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest |w| in each group of ``m`` along the last (input) dim."""
    if weight.shape[-1] % m:
        raise ConfigError(f"input dimension {weight.shape[-1]} is not a multiple of m={m}.")
    groups = weight.detach().abs().reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return mask.reshape(weight.shape)


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` along the last dim has at most ``n`` non-zeros."""
    if weight.shape[-1] % m:
        return False
    return bool(((weight.reshape(-1, m) != 0).sum(1) <= n).all())


def _eligible(model: nn.Module, cfg: NMSparsityConfig) -> list[tuple[str, nn.Module]]:
    out = []
    for name, mod in model.named_modules():
        if type(mod).__name__ not in cfg.include and not any(
                isinstance(mod, getattr(nn, t, ())) for t in cfg.include if hasattr(nn, t)):
            continue
        if is_skipped(name, mod, cfg.skip, cfg.filter_fn):
            continue
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            out.append((name, mod))
    return out


@register_pass(NMSparsityConfig)
def nm_sparsify(model: nn.Module, cfg: NMSparsityConfig, ctx: PassContext) -> nn.Module:
    """Apply N:M masks in place to every eligible layer whose input dim is a multiple of ``m``."""
    layers = _eligible(model, cfg)
    skipped = []
    masks = {}
    for name, mod in layers:
        w = mod.weight.reshape(mod.weight.shape[0], -1)
        if w.shape[1] % cfg.m:
            skipped.append(name)
            continue
        masks[name] = nm_mask(w, cfg.n, cfg.m).reshape(mod.weight.shape)
    if not masks:
        raise ConfigError(f"no layer can take {cfg.n}:{cfg.m} sparsity (input dims must be multiples of {cfg.m}; "
                          f"eligible: {[n for n, _ in layers]}).")
    with torch.no_grad():
        for name, mod in layers:
            if name in masks:
                mod.weight.mul_(masks[name].to(mod.weight.dtype))
    if skipped:
        log.info("N:M: left dense (input dim not a multiple of %d): %s", cfg.m, ", ".join(skipped))
    return model


def semi_structured_backends() -> dict[str, Any]:
    """``{"cutlass": ..., "cusparselt": ...}``: torch.sparse's semi-structured (2:4) tensor classes by backend
    (``cls.from_dense(w)``); empty where this torch build has none."""
    try:
        from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS
    except ImportError:  # pragma: no cover
        return {}
    return {"cutlass": SparseSemiStructuredTensorCUTLASS, "cusparselt": SparseSemiStructuredTensorCUSPARSELT}


def gpu_speed_check(in_features: int = 4096, out_features: int = 4096, batch: int = 4096, *,
                    repeats: int = 50, backends: tuple[str, ...] = ("cutlass", "cusparselt")) -> dict[str, Any]:
    """Time a 2:4-sparse fp16 Linear against the dense one on CUDA, each in its fastest form (eager or CUDA
    graph, :func:`slimkit.evaluation.latency.cuda_latency_forms`), with each semi-structured backend of
    ``torch.sparse`` (CUTLASS, cuSPARSELt). Returns the dense time, each backend's time or why it failed
    (``backends``), and the best backend's ``sparse_ms``, ``speedup`` and ``max_abs_diff``; or
    ``{"skipped": reason}`` when no suitable GPU or kernel is available."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: 2:4 sparse kernels need an NVIDIA GPU (Ampere or newer)"}
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return {"skipped": f"compute capability {major}.x < 8.0: no sparse tensor cores"}
    classes = semi_structured_backends()
    if not classes:  # pragma: no cover
        return {"skipped": "torch.sparse has no semi-structured tensor classes in this build"}
    dev = torch.device("cuda")
    w = torch.randn(out_features, in_features, device=dev, dtype=torch.float16)
    w = w * nm_mask(w, 2, 4)
    x = torch.randn(batch, in_features, device=dev, dtype=torch.float16)

    def bench(fn: Any) -> dict[str, Any]:
        return cuda_latency_forms(fn, warmup=10, repeats=repeats, batch=batch, device=dev)

    dense = bench(lambda: torch.nn.functional.linear(x, w))
    ref = torch.nn.functional.linear(x, w)
    results: dict[str, Any] = {}
    for name in backends:
        try:
            ws = classes[name].from_dense(w)  # KeyError for a backend this build lacks: recorded below
            err = float((torch.nn.functional.linear(x, ws) - ref).abs().max())
            t = bench(lambda ws=ws: torch.nn.functional.linear(x, ws))
        except Exception as exc:  # noqa: BLE001 - kernels missing for this build/device: a result
            results[name] = {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        results[name] = {"sparse_ms": t["median"], "form": t["form"], "speedup": dense["median"] / t["median"],
                         "max_abs_diff": err}
    ok = {k: v for k, v in results.items() if "sparse_ms" in v}
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "shape": [batch, in_features, out_features],
                           "dense_ms": dense["median"], "dense_form": dense["form"], "backends": results}
    if not ok:
        return {**out, "skipped": "semi-structured kernels failed: " + "; ".join(
            f"{k}: {v['skipped']}" for k, v in results.items())}
    best = min(ok, key=lambda k: ok[k]["sparse_ms"])
    return {**out, "backend": best, "sparse_ms": ok[best]["sparse_ms"], "speedup": ok[best]["speedup"],
            "max_abs_diff": ok[best]["max_abs_diff"]}
