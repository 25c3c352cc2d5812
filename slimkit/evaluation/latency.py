"""Latency, measured, never inferred: warm up, then time ``repeats`` single calls, report the median and the
90th percentile in milliseconds, with the thread count pinned for the measurement and restored afterwards.
On CPU each call is timed with ``time.perf_counter``; on CUDA with a pair of CUDA events around the call and
a synchronize before reading them (the GPU's own clock: kernel launches are asynchronous). This module is the
one place slimkit times anything."""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from slimkit.config.recipe import LatencyConfig
from slimkit.errors import ConfigError

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

__all__ = ["batched", "cpu_flags", "cpu_has_vnni", "environment", "interleaved_times", "measure_latency",
           "ort_compare", "ort_latency", "paired_latency", "paired_ratios", "throughput", "torch_latency"]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(fn: Callable[[], Any], *, warmup: int = 10, repeats: int = 30, batch: int = 1,
                    runtime: str = "torch", threads: int | None = None,
                    device: torch.device | str | None = None) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    ``threads`` pins ``torch.set_num_threads`` for the measurement (None keeps the current setting) and
    the previous value is restored afterwards. ``device`` of type cuda times each call with CUDA events on
    the current stream (synchronized before they are read) instead of the host clock. Returns
    ``{"median", "p90", "batch", "runtime"}`` in milliseconds (and ``"timer": "cuda-events"`` on CUDA).
    """
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"latency needs repeats >= 1, warmup >= 0, batch >= 1 (got {repeats}, {warmup}, {batch}).")
    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        times = _cuda_times(fn, repeats, dev) if cuda and dev is not None else _host_times(fn, repeats)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    out = {"median": float(statistics.median(times)), "p90": float(_percentile(times, 0.9)),
           "batch": int(batch), "runtime": runtime}
    return {**out, "timer": "cuda-events"} if cuda else out


def _host_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _cuda_times(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Per-call milliseconds between CUDA events recorded before and after ``fn()`` (read after a synchronize)."""
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # one call at a time: the next call does not overlap this one
            pairs.append((start, end))
        return [float(s.elapsed_time(e)) for s, e in pairs]


def cuda_graph(fn: Callable[[], Any], device: torch.device | str, warmup: int = 3) -> Callable[[], Any]:
    """``fn`` captured once in a CUDA graph; the returned callable replays it. The replay reads and writes the
    same tensors every call (what CUDA graphs require): ``fn`` must use fixed inputs, as a latency closure does.
    Raises RuntimeError (or what torch raises) where ``fn`` cannot be captured, e.g. a host synchronization."""
    dev = torch.device(device)
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def cuda_latency_forms(fn: Callable[[], Any], *, warmup: int = 10, repeats: int = 30, batch: int = 1,
                       device: torch.device | str = "cuda") -> dict[str, Any]:
    """:func:`measure_latency` of ``fn`` on CUDA in each of its forms, eager (one launch per kernel from
    Python) and replayed as a CUDA graph (:func:`cuda_graph`): the fastest form's record, with ``"form"``,
    ``"forms": {"eager": ms, "cuda-graph": ms or None}`` and ``"graph_error"`` where capture failed."""
    eager = measure_latency(fn, warmup=warmup, repeats=repeats, batch=batch, runtime="torch-cuda", device=device)
    forms: dict[str, float | None] = {"eager": eager["median"], "cuda-graph": None}
    best, form, error = eager, "eager", None
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # a call that syncs with the host cannot be captured: try it first,
    try:  # since a failed capture leaves torch's CUDA generator unusable in this process
        fn()
    except RuntimeError as exc:
        error = f"not captured: the call synchronizes with the host ({str(exc)[:160]})"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    if error is None:
        try:
            replay = cuda_graph(fn, device)
        except Exception as exc:  # noqa: BLE001 - not capturable: the eager form is the only one
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
    if error is None:
        graphed = measure_latency(replay, warmup=warmup, repeats=repeats, batch=batch, runtime="torch-cuda",
                                  device=device)
        forms["cuda-graph"] = graphed["median"]
        if graphed["median"] < eager["median"]:
            best, form = graphed, "cuda-graph"
    out = {**best, "form": form, "forms": forms}
    return {**out, "graph_error": error} if error else out


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


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine a run measured on, for its report: torch and Python versions, threads, the CPU's model name,
    the device the run used and, on CUDA, the GPU's name."""
    import platform
    from pathlib import Path

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = torch.device(device)
    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "threads": torch.get_num_threads(), "cpu": cpu, "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


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

    def fn() -> None:
        model(*xs)

    with eval_mode(model), torch.no_grad():
        return measure_latency(fn, warmup=cfg.warmup, repeats=cfg.repeats, batch=cfg.batch,
                               runtime="torch" if device.type == "cpu" else f"torch-{device.type}",
                               threads=cfg.threads, device=device)


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


def interleaved_times(fns: Mapping[K, Callable[[], Any]], *, rounds: int, repeats: int = 1, warmup: int = 0,
                      order: str = "alternate", seed: int = 0, threads: int | None = None,
                      refill: int = 0) -> dict[K, dict[str, Any]]:
    """The one way slimkit times several things against each other in one process, call by call.

    Each named zero-argument callable first gets ``warmup`` untimed calls (the names in the given order, one
    name's calls together); then ``rounds`` rounds of ``repeats`` steps, a step calling every name once, one
    after the other: in the given order reversed on every other step, counted across rounds (A B, B A, A B,
    ...; ``order="alternate"``) or in a new random order each step (``order="shuffle"``,
    ``random.Random(seed)``), so that a change of the machine's load between two calls hits every name alike.
    Each call is timed on the host's wall clock (``perf_counter``) and its CPU time is read: the calling
    thread's (``time.thread_time``) when ``threads == 1``, the process's (``time.process_time``) otherwise;
    either leaves out the time another process held the core. ``threads`` also pins
    ``torch.set_num_threads`` for the measurement (restored afterwards; None keeps it).

    ``refill`` calls of a name are made right before its timed call in every step, so the timed call runs on
    the caches the name leaves itself, as a model called back to back in a serving loop does, not on the
    caches the other names just filled: calls alternated one by one penalise the smaller model (measured on
    MobileNetV2 at 32 px, b1, one thread: a 0.56 MB int8 file took 0.138 ms on the first call after its fp32
    baseline and 0.118 ms on the second; the 9.1 MB fp32 file 0.300 and 0.289 ms: docs/auto.md, "Warm calls").
    A refill call that follows another name's call is timed apart (``"cold_median"``).

    Returns per name ``{"median"`` (of the rounds' medians, ms), ``"p90"`` (of all calls), ``"rounds"`` (each
    round's median), ``"cpu_median"`` (of all calls), ``"cpu_clock"``, ``"calls", "cpu_calls"}``: every
    timed call's wall and CPU milliseconds in call order, so the i-th entries of two names come from the same
    step (:func:`paired_ratios` of two names' lists); with ``refill`` also ``"cold_median"`` (ms, the median
    of the refill calls made right after another name's call: what a call costs on the caches the others left)."""
    if rounds < 1 or repeats < 1 or warmup < 0 or refill < 0 or not fns or order not in ("alternate", "shuffle"):
        raise ConfigError(f"interleaved_times needs rounds >= 1, repeats >= 1, warmup >= 0, refill >= 0, at least "
                          f"one callable and order 'alternate' or 'shuffle' (got {rounds}, {repeats}, {warmup}, "
                          f"{refill}, {len(fns)} callables, {order!r}).", hint="Pass rounds and repeats of 1 or more.")
    names = list(fns)
    cpu_clock = time.thread_time if threads == 1 else time.process_time
    rng = random.Random(seed)
    wall: dict[K, list[list[float]]] = {n: [[] for _ in range(rounds)] for n in names}
    cpu: dict[K, list[float]] = {n: [] for n in names}
    cold: dict[K, list[float]] = {n: [] for n in names}
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for n in names:
            for _ in range(warmup):
                fns[n]()
        step = 0
        last: K | None = None
        for r in range(rounds):
            for _ in range(repeats):
                if order == "shuffle":
                    sequence = rng.sample(names, len(names))
                else:
                    sequence = names if step % 2 == 0 else names[::-1]
                for n in sequence:
                    for i in range(refill):
                        w0 = time.perf_counter()
                        fns[n]()
                        if i == 0 and last != n:
                            cold[n].append((time.perf_counter() - w0) * 1e3)
                    last = n
                    w0, c0 = time.perf_counter(), cpu_clock()
                    fns[n]()
                    wall[n][r].append((time.perf_counter() - w0) * 1e3)
                    cpu[n].append((cpu_clock() - c0) * 1e3)
                step += 1
    finally:
        torch.set_num_threads(previous)

    def record(n: K) -> dict[str, Any]:
        medians = [float(statistics.median(x)) for x in wall[n]]
        calls = [t for x in wall[n] for t in x]
        out = {"median": float(statistics.median(medians)), "p90": float(_percentile(sorted(calls), 0.9)),
               "rounds": medians, "cpu_median": float(statistics.median(cpu[n])), "cpu_clock": cpu_clock.__name__,
               "calls": calls, "cpu_calls": cpu[n]}
        if cold[n]:
            out["cold_median"] = float(statistics.median(cold[n]))
        return out

    return {n: record(n) for n in names}


def paired_ratios(values: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Same-step ratios ``values[i] / base[i]`` (two names' ``calls``, ``cpu_calls`` or ``rounds`` from
    :func:`interleaved_times`): their median and quartiles ``{"median", "q1", "q3"}``, linear interpolation
    as numpy's default. A zero in ``base`` gives an infinite ratio."""
    if len(values) != len(base) or not values:
        raise ConfigError(f"paired_ratios needs two equally long, non-empty lists (got {len(values)} and {len(base)}).",
                          hint="Pair the lists of two names of one interleaved_times call.")
    ratios = sorted(v / b if b else math.inf for v, b in zip(values, base, strict=True))
    return {"median": float(statistics.median(ratios)), "q1": float(_percentile(ratios, 0.25)),
            "q3": float(_percentile(ratios, 0.75))}


def ort_compare(files: Mapping[str, str | os.PathLike[str]], inputs: Any, cfg: LatencyConfig, *,
                rounds: int, refill: int = 1) -> dict[str, dict[str, Any]]:
    """The one way slimkit compares ONNX files' latency (an artifact against its fp32 baseline: a run's
    deployed numbers, int8 against fp32 at export, auto's finalist re-timing, bench/auto.py's columns).

    Each file gets one session (:func:`ort_session`, ``cfg.threads`` intra-op threads, idle threads not
    spinning so one session's pool cannot steal the cores of the next) called on ``inputs`` repeated to
    ``cfg.batch``, timed by :func:`interleaved_times`: ``cfg.warmup`` untimed calls per file, then ``rounds``
    rounds of ``cfg.repeats`` calls per file, the files' calls alternating one by one with the order reversed
    every other time (A B, B A, A B, ...), so a change of the machine's load between two calls hits every file
    alike (timing each file in blocks of whole seconds let the load of one block decide a ratio: docs/auto.md,
    "Why two timings of one file disagreed"). Each timed call follows ``refill`` untimed calls of the same file
    (:func:`interleaved_times`), so every file is timed on warm caches, as it runs when called back to back,
    not right after another file evicted it (docs/auto.md, "Warm calls"). Returns per name ``{"median"`` (of
    the rounds' medians), ``"p90"`` (of all calls), ``"batch", "runtime", "rounds"`` (each round's median),
    ``"cpu_median"}``: the median process CPU time of a call, which leaves out the time another process held
    the core; with ``refill``, ``"cold_median"``: the first call after the other files ran."""
    if rounds < 1 or cfg.repeats < 1:
        raise ConfigError(f"ort_compare needs rounds >= 1 and repeats >= 1 (got {rounds}, {cfg.repeats}).",
                          hint="Set evaluate.latency.repeats >= 1 and pass rounds >= 1.")
    names = list(files)
    sessions = {n: ort_session(files[n], cfg.threads, spinning=False) for n in names}
    calls = {n: functools.partial(sessions[n].run, None, ort_feed(sessions[n], batched(inputs, cfg.batch)))
             for n in names}
    # threads=None: torch's threads are not ORT's, and the process's CPU time counts ORT's intra-op pool
    timed = interleaved_times(calls, rounds=rounds, repeats=cfg.repeats, warmup=cfg.warmup, refill=refill)
    keep = ("median", "p90", "rounds", "cpu_median", "cold_median")
    return {n: {"batch": int(cfg.batch), "runtime": "onnxruntime", **{k: r[k] for k in keep if k in r}}
            for n, r in timed.items()}
