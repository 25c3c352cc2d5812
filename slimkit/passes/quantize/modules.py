"""Quantized layer wrappers and module surgery helpers.

A wrapper holds the float module (``.module``, unchanged class, so conv subclasses with their own padding
keep their forward) plus ``weight_fake_quant`` and ``input_fake_quant`` (or ``None``). The forward
fake-quantizes the input, then calls the float module with its weight swapped for the fake-quantized one
(``torch.func.functional_call``).

Names the exporters read (stable): ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` (all
:class:`QuantWrapper`), attributes ``module`` (the float layer; ``module.weight`` is the float weight),
``weight_fake_quant`` (:class:`FakeQuantize`, :class:`LogFakeQuantize` or :class:`BinaryFakeQuantize`),
``input_fake_quant`` (:class:`FakeQuantize`, :class:`SignActivation` or ``None``). State-dict keys are
``<name>.module.weight``, ``<name>.weight_fake_quant.scale``, ``<name>.weight_fake_quant.zero_point``,
``<name>.input_fake_quant.scale``, ``<name>.input_fake_quant.zero_point``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from slimkit.config.layers import LayerFilterFn, is_skipped
from slimkit.passes.quantize.fake_quant import BinaryFakeQuantize, FakeQuantize, LogFakeQuantize

QUANTIZABLE: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d}


class QuantWrapper(nn.Module):
    """A float layer with fake-quantized weight and (optionally) input."""

    def __init__(self, module: nn.Module, weight_fake_quant: nn.Module | None,
                 input_fake_quant: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.weight_fake_quant = weight_fake_quant
        self.input_fake_quant = input_fake_quant

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized (dequantized) weight the forward uses."""
        w = self.module.weight
        return w if self.weight_fake_quant is None else self.weight_fake_quant(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fake_quant is not None:
            x = self.input_fake_quant(x)
        if self.weight_fake_quant is None:
            return self.module(x)
        return functional_call(self.module, {"weight": self.quantized_weight()}, (x,), strict=False)


class QuantLinear(QuantWrapper):
    """Fake-quantized ``nn.Linear``."""

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.module.out_features


class QuantConv1d(QuantWrapper):
    """Fake-quantized ``nn.Conv1d``."""


class QuantConv2d(QuantWrapper):
    """Fake-quantized ``nn.Conv2d`` (or a subclass; its own forward is kept)."""


def wrapper_class(module: nn.Module) -> type[QuantWrapper]:
    """The wrapper class for a float layer."""
    if isinstance(module, nn.Linear):
        return QuantLinear
    if isinstance(module, nn.Conv2d):
        return QuantConv2d
    if isinstance(module, nn.Conv1d):
        return QuantConv1d
    raise TypeError(f"{type(module).__name__} is not a quantizable layer")


def quantizable_layers(model: nn.Module, include: list[str] | None = None, skip: list[str] | None = None,
                       filter_fn: LayerFilterFn | None = None) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of layers to quantize: instances of ``include`` types, not skipped (``skip``,
    ``filter_fn``: slimkit.config.layers), not already wrapped."""
    types = tuple(QUANTIZABLE[t] for t in (include or list(QUANTIZABLE)))
    wrapped: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, QuantWrapper):
            wrapped.add(id(mod.module))
            continue
        if id(mod) in wrapped or not isinstance(mod, types) or name == "":
            continue
        if is_skipped(name, mod, skip or (), filter_fn):
            continue
        yield name, mod


def wrap_layers(model: nn.Module, layers: list[tuple[str, nn.Module]],
                make: Callable[[str, nn.Module], tuple[nn.Module | None, nn.Module | None]]) -> dict[str, QuantWrapper]:
    """Wrap each ``(name, layer)``; ``make(name, layer)`` returns ``(weight_fq, input_fq)``. Returns the
    wrappers by name. A layer object used at several places is wrapped once and shared."""
    done: dict[int, QuantWrapper] = {}
    out: dict[str, QuantWrapper] = {}
    for name, layer in layers:
        if id(layer) not in done:
            wfq, ifq = make(name, layer)
            device = layer.weight.device  # quantizers are made on CPU: they live where the layer lives
            for fq in (wfq, ifq):
                if fq is not None:
                    fq.to(device)
            done[id(layer)] = wrapper_class(layer)(layer, wfq, ifq)
        model.set_submodule(name, done[id(layer)])
        out[name] = done[id(layer)]
    return out


def quant_wrappers(model: nn.Module) -> Iterator[tuple[str, QuantWrapper]]:
    """Every :class:`QuantWrapper` in ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, QuantWrapper):
            yield name, mod


def fake_quantizers(model: nn.Module) -> Iterator[nn.Module]:
    """Every fake-quant module (uniform, log, binary)."""
    for mod in model.modules():
        if isinstance(mod, FakeQuantize | LogFakeQuantize | BinaryFakeQuantize):
            yield mod


def freeze_all(model: nn.Module) -> nn.Module:
    """Stop every observer; fake quantization stays on."""
    for fq in fake_quantizers(model):
        fq.freeze()
    return model


def unwrap(model: nn.Module, *, bake: bool = True) -> nn.Module:
    """Replace wrappers by their float modules; with ``bake`` the float weight becomes the fake-quantized one
    (the model then computes like the quantized one minus input quantization)."""
    for name, w in list(quant_wrappers(model)):
        if bake and w.weight_fake_quant is not None:
            with torch.no_grad():
                w.module.weight.copy_(w.quantized_weight())
        model.set_submodule(name, w.module)
    return model
