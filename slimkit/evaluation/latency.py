"""Latency, measured, never inferred: warm up, then time ``repeats`` single calls with
``time.perf_counter``, report the median and the 90th percentile in milliseconds, with the thread count
pinned for the measurement and restored afterwards."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.config.recipe import LatencyConfig
from slimkit.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["batched", "cpu_flags", "cpu_has_vnni", "measure_latency", "ort_latency", "paired_latency", "throughput", "torch_latency"]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(fn: Callable[[], Any], *, warmup: int = 10, repeats: int = 30, batch: int = 1,
                    runtime: str = "torch", threads: int | None = None,
                    sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    ``threads`` pins ``torch.set_num_threads`` for the measurement (None keeps the current setting) and
    the previous value is restored afterwards. ``sync`` (e.g. ``torch.cuda.synchronize``) is called
    before reading the clock. Returns ``{"median", "p90", "batch", "runtime"}`` in milliseconds.
    """
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"latency needs repeats >= 1, warmup >= 0, batch >= 1 (got {repeats}, {warmup}, {batch}).")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        if sync is not None:
            sync()
        times: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return {"median": float(statistics.median(times)), "p90": float(_percentile(times, 0.9)),
            "batch": int(batch), "runtime": runtime}


def throughput(latency: dict[str, Any] | None) -> float | None:
    """Samples per second implied by a latency result: ``batch / median seconds``."""
    if not latency or not latency.get("median"):
        return None
    return float(latency["batch"]) / (float(latency["median"]) / 1e3)


def batched(inputs: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """Repeat example inputs (batch-first tensors) along dim 0 to exactly ``batch`` rows."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    out = []
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            raise ConfigError(f"latency needs batch-first tensors as example inputs, got {type(t).__name__}.")
        reps = math.ceil(batch / t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:batch].contiguous())
    return tuple(out)


def cpu_flags() -> set[str] | None:
    """The CPU feature flags of this machine (``/proc/cpuinfo``, the first ``flags`` line); None if unknown."""
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), None)


def cpu_has_vnni() -> bool | None:
    """Whether this CPU advertises VNNI int8 dot products (x86 ``avx512_vnni`` / ``avx_vnni``); None if unknown."""
    flags = cpu_flags()
    return None if flags is None else bool({"avx512_vnni", "avx_vnni"} & flags)


def paired_latency(measure_a: Callable[[], dict[str, Any]], measure_b: Callable[[], dict[str, Any]], *,
                   rounds: int = 3) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare two things in the same process: ``rounds`` rounds of ``measure_a()`` and ``measure_b()``
    (latency records as :func:`measure_latency` returns), the order flipped every other round (A B, B A, A B,
    ...) so drift on a shared machine hits both alike. Returns one record for each: the round whose median is
    the middle one, with ``median`` set to the median of the rounds' medians (for two rounds, A B B A, their
    mean)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    ra: list[dict[str, Any]] = []
    rb: list[dict[str, Any]] = []
    for i in range(rounds):
        if i % 2:
            rb.append(measure_b())
            ra.append(measure_a())
        else:
            ra.append(measure_a())
            rb.append(measure_b())

    def mid(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(rows, key=lambda r: r["median"])
        return {**ordered[(len(rows) - 1) // 2], "median": statistics.median(r["median"] for r in rows)}

    return mid(ra), mid(rb)


def torch_latency(model: nn.Module, example_inputs: Any, cfg: LatencyConfig | None = None) -> dict[str, Any]:
    """Latency of ``model`` in PyTorch on ``example_inputs`` repeated to ``cfg.batch``, in eval mode under
    ``no_grad`` (training flags restored). Runtime is ``torch`` on CPU, ``torch-<device>`` elsewhere."""
    from slimkit.context import eval_mode, model_device

    cfg = cfg or LatencyConfig()
    device = model_device(model)
    xs = tuple(t.to(device) for t in batched(example_inputs, cfg.batch))
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def fn() -> None:
        model(*xs)

    with eval_mode(model), torch.no_grad():
        return measure_latency(fn, warmup=cfg.warmup, repeats=cfg.repeats, batch=cfg.batch,
                               runtime="torch" if device.type == "cpu" else f"torch-{device.type}",
                               threads=cfg.threads, sync=sync)


_ORT_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def ort_session(onnx_model: str | os.PathLike[str] | bytes, threads: int | None = None, *, optimize: bool = True,
                optimized_path: str | os.PathLike[str] | None = None, spinning: bool = True) -> Any:
    """The one way slimkit opens an onnxruntime CPU InferenceSession (a path or serialized model bytes):
    sequential execution, ``intra_op_num_threads=threads`` (0, ORT's default, when None), one inter-op
    thread, all graph optimizations (none with ``optimize=False``), warnings silenced.
    ``optimized_path`` writes the graph onnxruntime runs after its optimizations there; ``spinning=False``
    stops idle intra-op threads from spinning (so interleaved sessions do not steal each other's cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_feed(session: Any, inputs: Any) -> dict[str, Any]:
    """Map tensors to a session's inputs, in order, cast to the dtype each input declares."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    specs = session.get_inputs()
    if len(specs) > len(inputs):
        raise ConfigError(f"the ONNX model takes {len(specs)} inputs ({[s.name for s in specs]}), "
                          f"but {len(inputs)} were given.")
    feed = {}
    for spec, t in zip(specs, inputs, strict=False):
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
        dtype = _ORT_NUMPY.get(spec.type)
        feed[spec.name] = arr.astype(dtype) if dtype and str(arr.dtype) != dtype else arr
    return feed


def ort_latency(onnx_path: str | os.PathLike[str], inputs: Any, cfg: LatencyConfig | None = None) -> dict[str, Any]:
    """Latency of an ONNX file in onnxruntime (CPU) on ``inputs`` repeated to ``cfg.batch``."""
    cfg = cfg or LatencyConfig()
    session = ort_session(onnx_path, cfg.threads)
    feed = ort_feed(session, batched(inputs, cfg.batch))
    return measure_latency(lambda: session.run(None, feed), warmup=cfg.warmup, repeats=cfg.repeats,
                           batch=cfg.batch, runtime="onnxruntime", threads=cfg.threads)

