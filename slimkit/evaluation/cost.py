"""Cost metrics: parameters, nonzero parameters, MACs, weight sparsity and bytes on disk.

- ``params``: elements of the model's unique parameters (tied weights count once).
- ``nonzero_params``: of those, the elements that are not zero.
- ``macs``: multiply-accumulates of one forward on ``example_inputs`` (batch 1 by contract), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv/attention ops) as FLOPs // 2. Elementwise ops
  (bias add, norms, activations, pooling) are not counted.
- ``sparsity``: the fraction of zeros over the ``weight`` tensors of Linear and Conv layers only (biases,
  norms and embeddings excluded): the layers pruning acts on.
- ``file_size``: bytes of a file; a directory is summed; an ``.onnx`` file counts its external data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["count_macs", "count_nonzero_params", "count_params", "file_size", "sparsity", "sparsity_weights"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (each shared parameter counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of ``t``'s values: quantized tensor subclasses (torchao ``Int8Tensor`` weights after
    ``dynamic``/``weight-only`` int8) implement few ops, so they are dequantized first."""
    t = t.detach()
    if type(t) not in (torch.Tensor, nn.Parameter) and callable(getattr(t, "dequantize", None)):
        return t.dequantize()
    return t


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameter elements that are not zero (each shared parameter counted once)."""
    return int(sum(int(torch.count_nonzero(_plain(p))) for p in model.parameters()))


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass on ``example_inputs`` (a tensor or a tuple of tensors).

    Runs the model once in eval mode under ``no_grad`` with ``FlopCounterMode``; training flags are
    restored and no hook stays on the model. MACs = FLOPs // 2."""
    from torch.utils.flop_counter import FlopCounterMode

    from slimkit.context import eval_mode, model_device
    from slimkit.data.batch import call_model

    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        call_model(model, example_inputs, model_device(model))
    return int(counter.get_total_flops()) // 2


def sparsity_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, weight)`` tensors :func:`sparsity` counts: weights of Linear and Conv layers."""
    out = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            w = getattr(module, "weight", None)
            if isinstance(w, torch.Tensor) and id(w) not in seen:
                seen.add(id(w))
                out.append((name, w))
    return out


def sparsity(model: nn.Module) -> float | None:
    """Fraction of zero elements over the weights of Linear and Conv layers (None if there are none)."""
    total = zeros = 0
    for _, w in sparsity_weights(model):
        total += w.numel()
        zeros += w.numel() - int(torch.count_nonzero(_plain(w)))
    return zeros / total if total else None


def onnx_external_files(path: Path) -> set[Path]:
    """External-data files an ONNX model references (read without loading the data)."""
    files: set[Path] = set()
    default = path.with_name(path.name + ".data")
    if default.is_file():
        files.add(default)
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # unreadable: count the default data file only
        log.debug("cannot read %s for external data (%s)", path, exc)
        return files
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    candidate = (path.parent / entry.value).resolve()
                    if candidate.is_file():
                        files.add(candidate)
    return files


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of an artifact: a file; a directory (every file under it, summed); an ONNX file
    together with its external-data file(s) (``model.onnx.data`` or what its tensors reference)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        raise ConfigError(f"artifact not found: {path}", hint="Export or save the model before measuring its size.")
    size = path.stat().st_size
    if path.suffix == ".onnx":
        size += sum(p.stat().st_size for p in onnx_external_files(path) if p.resolve() != path.resolve())
    return size
