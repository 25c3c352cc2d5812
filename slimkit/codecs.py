"""Tensor codecs: compact stored forms for some state entries of some modules (packed int8/int4 weights,
torchao tensors), registered by the modules that define those layers and used by
:mod:`slimkit.exporters.safetensors_io` when saving and loading. The registry sits below passes and exporters
(docs/architecture.md), so a pass registers its codec without importing an exporter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit.errors import ModelLoadError

__all__ = ["Codec", "Encoded", "get_codec", "register_codec", "registered_codecs"]

Encoded = dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]


@dataclass(frozen=True)
class Codec:
    """A compact stored form for some state entries of some modules (see the module docstring).

    ``encode(module, prefix) -> {state name: (parts, info)}`` (empty: nothing claimed); ``parts`` maps a
    non-empty suffix to a CPU tensor, ``info`` is JSON-able. ``decode(parts, info, state) -> tensor``.
    The decoded value may differ from the in-memory tensor (a quantized weight decodes to its quantized
    value); :func:`encoded_state` tells what a model's state will load back as.
    """

    name: str
    module_types: tuple[type, ...]
    encode: Callable[[nn.Module, str], Encoded]
    decode: Callable[[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]], torch.Tensor]
    module: str = ""


_CODECS: dict[str, Codec] = {}


def registered_codecs() -> list[Codec]:
    """Every registered codec, in registration order."""
    return list(_CODECS.values())


def register_codec(name: str, module_types: tuple[type, ...], encode: Callable[[nn.Module, str], Encoded],
                   decode: Callable[..., torch.Tensor], *, module: str) -> Codec:
    """Register a :class:`Codec`. ``module`` is the importable module that registers it (recorded in the
    manifest and imported on load if the codec is not registered yet; it must start with ``slimkit.``)."""
    codec = Codec(name, tuple(module_types), encode, decode, module)
    _CODECS[name] = codec
    return codec


def get_codec(name: str, module: str | None) -> Codec:
    """The codec ``name``, importing ``module`` (recorded in the manifest) first when it is not registered yet.
    Raises ModelLoadError when no slimkit module registers it."""
    if name not in _CODECS and isinstance(module, str) and module.startswith("slimkit."):
        import importlib

        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModelLoadError(f"tensor codec '{name}' needs {module}, which cannot be imported: {exc}") from None
    codec = _CODECS.get(name)
    if codec is None:
        raise ModelLoadError(f"the checkpoint uses tensor codec '{name}', which no slimkit module registers.",
                             hint="Load it with the slimkit version that saved it.")
    return codec
