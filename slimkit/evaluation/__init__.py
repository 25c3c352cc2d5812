"""Evaluation: quality (accuracy, F1, fidelity), cost (params, MACs, bytes, sparsity) and latency.

:func:`evaluate_model` returns exactly the METRICS object of ``report.schema.json``; a value that was not
measured is ``None``, never invented."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.config.recipe import LatencyConfig
from slimkit.errors import ConfigError
from slimkit.evaluation.cost import count_macs, count_nonzero_params, count_params, file_size, sparsity
from slimkit.evaluation.latency import measure_latency, ort_latency, throughput, torch_latency
from slimkit.evaluation.metrics import classification_metrics, fidelity, primary_output

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_KEYS", "classification_metrics", "count_macs", "count_nonzero_params", "count_params",
    "empty_metrics", "evaluate_model", "fidelity", "file_size", "measure_latency", "ort_latency",
    "primary_output", "sparsity", "throughput", "torch_latency",
]

METRIC_KEYS = ("accuracy", "f1", "fidelity", "params", "nonzero_params", "macs", "size_bytes", "artifact",
               "sparsity", "latency_ms", "throughput")


def empty_metrics() -> dict[str, Any]:
    """A METRICS object with nothing measured (every value None)."""
    return dict.fromkeys(METRIC_KEYS)


def _as_inputs(x: Any) -> tuple[Any, ...] | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return (x,)
    return tuple(x)


def _inputs_from_loader(loader: Iterable[Any] | None) -> tuple[Any, ...] | None:
    """First sample of the first batch, as batch-1 example inputs (for MACs and latency)."""
    if loader is None:
        return None
    from slimkit.data.batch import split_batch

    for batch in loader:
        x, _ = split_batch(batch)
        xs = (x,) if isinstance(x, torch.Tensor) else tuple(x) if isinstance(x, (tuple, list)) else None
        if xs is None or not all(isinstance(t, torch.Tensor) for t in xs):
            return None
        return tuple(t[:1] for t in xs)
    return None


def _relative(artifact: Path, run_dir: Path | None) -> str:
    if run_dir is None:
        return artifact.as_posix()
    return Path(os.path.relpath(Path(artifact).resolve(), Path(run_dir).resolve())).as_posix()


def evaluate_model(model: nn.Module | str | os.PathLike[str], loader: Iterable[Any] | None = None, *,
                   example_inputs: Any = None, latency: LatencyConfig | None = None,
                   artifact: str | os.PathLike[str] | None = None, run_dir: str | os.PathLike[str] | None = None,
                   reference: nn.Module | None = None, fidelity_loader: Iterable[Any] | None = None,
                   ) -> dict[str, Any]:
    """Measure a model and return the report's METRICS object.

    model: an ``nn.Module``, or the path of an ``.onnx`` file (run with onnxruntime on CPU; MACs and
        sparsity are then None, params are counted over the graph's initializers).
    loader: labelled ``(x, y)`` batches -> ``accuracy`` (fraction) and macro ``f1``.
    example_inputs: batch-1 inputs for MACs and latency (default: the first sample of ``loader``).
    latency: a :class:`LatencyConfig` -> ``latency_ms`` ``{median, p90, batch, runtime}`` and
        ``throughput`` (samples/s); None skips the measurement.
    artifact: the file (or directory) whose bytes ``size_bytes`` counts; reported relative to ``run_dir``.
    reference: a model to compare against -> ``fidelity`` on ``fidelity_loader`` (default: ``loader``,
        else ``example_inputs``).
    """
    from slimkit.evaluation.onnx_model import OnnxModel, is_onnx_path, onnx_param_counts

    out = empty_metrics()
    example_inputs = _as_inputs(example_inputs)
    onnx_path: Path | None = None
    if is_onnx_path(model):
        onnx_path = Path(model)  # type: ignore[arg-type]
        runnable: Any = OnnxModel(onnx_path, threads=latency.threads if latency else None)
        artifact = artifact if artifact is not None else onnx_path
    elif isinstance(model, nn.Module):
        runnable = model
    else:
        raise ConfigError(f"evaluate_model expects a torch.nn.Module or an .onnx path, got {type(model).__name__}.")

    if loader is not None:
        cls = classification_metrics(runnable, loader)
        out["accuracy"], out["f1"] = cls["accuracy"], cls["f1"]
    if example_inputs is None:
        example_inputs = _inputs_from_loader(loader)

    if reference is not None:
        source = fidelity_loader if fidelity_loader is not None else loader if loader is not None else example_inputs
        if source is None:
            raise ConfigError("fidelity needs inputs: give fidelity_loader, loader or example_inputs.")
        out["fidelity"] = fidelity(runnable, reference, source)

    if onnx_path is not None:
        out["params"], out["nonzero_params"] = onnx_param_counts(onnx_path)
    else:
        assert isinstance(model, nn.Module)
        out["params"] = count_params(model)
        out["nonzero_params"] = count_nonzero_params(model)
        out["sparsity"] = sparsity(model)
        if example_inputs is not None:
            try:
                out["macs"] = count_macs(model, example_inputs)
            except Exception as exc:  # a model FlopCounterMode cannot run: not measured, not invented
                log.warning("MACs not counted: %s: %s", type(exc).__name__, exc)

    if artifact is not None:
        out["size_bytes"] = file_size(artifact)
        out["artifact"] = _relative(Path(artifact), Path(run_dir) if run_dir is not None else None)

    if latency is not None:
        if example_inputs is None:
            log.warning("latency not measured: no example_inputs and no loader to take them from")
        elif onnx_path is not None:
            out["latency_ms"] = ort_latency(onnx_path, example_inputs, latency)
        else:
            out["latency_ms"] = torch_latency(model, example_inputs, latency)  # type: ignore[arg-type]
        out["throughput"] = throughput(out["latency_ms"])
    return out
