"""What auto measures before it searches: a per-layer latency cost table on the chosen runtime and a
per-layer sensitivity profile on calibration data. Analysis only: the model is never changed (each probe
works on a deep copy).

* cost: every Conv2d (not grouped) and Linear is timed alone on the input it receives in the model, at the
  latency batch, on the chosen runtime (onnxruntime: the layer exported alone to ONNX; torch: eager), through
  :mod:`slimkit.evaluation.latency`; ``share`` is its cost over the whole model's, timed the same way.
* sensitivity: each of the most expensive layers is pruned alone (structured, ratio 0.5, every other layer
  skipped) and factorized alone (SVD, rank ratio 0.5), and the mean output cosine to the original model on
  calibration batches is measured (:func:`slimkit.search.layer_sensitivity`).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.analysis.calibration import hooked_forward
from slimkit.config.recipe import LatencyConfig
from slimkit.progress import track

log = logging.getLogger(__name__)

PROBE_RATIO = 0.5


def layer_units(model: nn.Module, num_classes: int | None) -> list[str]:
    """Names of the Conv2d (groups 1) and Linear layers, the output layer left out (it keeps its width)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 or isinstance(m, nn.Linear):
            names.append(name)
    if names and isinstance(model.get_submodule(names[-1]), nn.Linear):
        last = model.get_submodule(names[-1])
        if num_classes is None or last.out_features == num_classes:
            names.pop()
    return names


def _layer_inputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    model.eval()
    hooked_forward(model, inputs, hooks)
    return seen


def _time(module: nn.Module, x: tuple[torch.Tensor, ...], runtime: str, lat: LatencyConfig, tmp: Path,
          tag: str, whole: bool = False) -> float:
    from slimkit.evaluation.latency import ort_latency, torch_latency
    from slimkit.exporters.onnx_export import export_onnx

    if runtime == "torch":
        return float(torch_latency(module, x, lat)["median"])
    # the one exporter; a layer alone traces exactly with TorchScript, ~10x faster than dynamo (the whole
    # model takes the default path: HF encoders trace with TracerWarnings, which the TorchScript path refuses)
    path = export_onnx(module, tmp / f"{tag}.onnx", x, opset=18 if whole else 17, dynamic_batch=False, dynamo=whole)
    return float(ort_latency(path, x, lat)["median"])


def cost_table(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], units: list[str], *, runtime: str,
               lat: LatencyConfig) -> dict[str, Any]:
    """``{"runtime", "batch", "model_ms", "layers": [{"unit", "type", "ms", "share"}]}`` most expensive first,
    every number measured on this machine."""
    from slimkit.evaluation.latency import batched

    xs = batched(example_inputs, lat.batch)
    inputs = _layer_inputs(model, xs, units)
    one = LatencyConfig(batch=lat.batch, warmup=lat.warmup, repeats=lat.repeats, threads=lat.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-auto-") as d, track("auto: layer latency", total=len(units) + 1) as task:
        tmp = Path(d)
        total = _time(model, xs, runtime, one, tmp, "model", whole=True)
        task.advance()
        for i, name in enumerate(units):
            if name in inputs:
                ms = _time(model.get_submodule(name), (inputs[name],), runtime, one, tmp, f"layer{i}")
                rows.append({"unit": name, "type": type(model.get_submodule(name)).__name__, "ms": ms,
                             "share": ms / total if total > 0 else None})
            task.advance()
    rows.sort(key=lambda r: -r["ms"])
    return {"runtime": runtime, "batch": lat.batch, "model_ms": total, "layers": rows}


def _score(model: nn.Module, reference: nn.Module, batches: list[Any]) -> float:
    """Mean output cosine over the calibration batches (each batch scored on its own: a list of tensors
    would read as one multi-input batch)."""
    from slimkit.evaluation.metrics import fidelity

    # a mapping batch (input_ids/attention_mask) goes in a list: fidelity would iterate a mapping's keys
    return sum(float(fidelity(model, reference, [x] if isinstance(x, Mapping) else x)["cosine"])
               for x in batches) / len(batches)


def sensitivity_profile(model: nn.Module, units: list[str], calibration: Any, example_inputs: tuple[torch.Tensor, ...],
                        *, batches: int = 2, all_units: list[str] | None = None) -> dict[str, Any]:
    """Per unit: fidelity (mean output cosine) with only that unit pruned (structured, ratio 0.5) and with
    only that unit factorized (SVD, rank ratio 0.5); ``prunable_alone`` is False when skipping every other
    layer also kept this one (it shares a dependency group). ``all_units``: every layer to hold still
    (default ``units``)."""
    from slimkit.analysis import layer_sensitivity, sensitivity_table
    from slimkit.api import apply_pass
    from slimkit.config.lowrank import SVDConfig
    from slimkit.config.structured import StructuredPruneConfig
    from slimkit.data.batch import split_batch
    from slimkit.evaluation.cost import count_params

    data = []
    for i, batch in enumerate(calibration):
        if i >= batches:
            break
        data.append(split_batch(batch)[0])
    reference = model.eval()
    n0 = count_params(model)
    removed: dict[str, int] = {}

    def pruned(unit: str) -> float:
        clone = copy.deepcopy(model)
        others = set(all_units or units) - {unit}  # its group partners (depthwise convs, norms) may follow it
        cfg = StructuredPruneConfig(ratio=PROBE_RATIO, unreached="ignore", filter_fn=lambda _m, name: name not in others)
        clone = apply_pass(clone, cfg, example_inputs=example_inputs, calibration=data)
        removed[unit] = n0 - count_params(clone)
        return _score(clone, reference, data)

    def factorized(unit: str) -> float:
        clone = copy.deepcopy(model)
        cfg = SVDConfig(rank_ratio=PROBE_RATIO, filter_fn=lambda _m, name: name == unit)
        clone = apply_pass(clone, cfg, example_inputs=example_inputs)
        return _score(clone, reference, data)

    with track("auto: layer sensitivity", total=None):
        prune_rows = sensitivity_table(layer_sensitivity(units, pruned))
        rank_rows = sensitivity_table(layer_sensitivity(units, factorized))
    rank_by_unit = {r["unit"]: r for r in rank_rows}
    rows = [{"unit": r["unit"], "prune_score": r["score"], "prune_loss": r["loss"],
             "params_removed": removed.get(r["unit"], 0), "prunable_alone": removed.get(r["unit"], 0) > 0,
             "lowrank_score": rank_by_unit[r["unit"]]["score"], "lowrank_loss": rank_by_unit[r["unit"]]["loss"]}
            for r in prune_rows]
    return {"probe_ratio": PROBE_RATIO, "metric": "mean output cosine to the original model", "layers": rows}


__all__ = ["PROBE_RATIO", "cost_table", "layer_units", "sensitivity_profile"]
