"""Models: a registry of in-repo architectures and safe loaders.

``build_model(ModelConfig, input_shape=..., num_classes=...)`` builds a registered ``arch`` (``mlp``,
``cnn-small``, ``resnet-mini``, ...), a Python ``entry_point`` (``pkg.mod:factory``) or an offline Hugging
Face model (``hf``), then loads ``weights`` with :func:`load_weights` (safetensors, or
``torch.load(weights_only=True)``; no pickled code is ever run).
"""

from __future__ import annotations

from typing import Any

from slimkit.models.build import build_model, load_weights
from slimkit.models.registry import arch_kwargs, get_arch, list_archs, register_arch


def __getattr__(name: str) -> Any:
    if name in ("MLP", "CNNSmall", "ResNetMini", "BasicBlock"):
        from slimkit.models import archs

        return getattr(archs, name)
    if name == "load_hf_model":
        from slimkit.models.hf import load_hf_model

        return load_hf_model
    raise AttributeError(f"module 'slimkit.models' has no attribute {name!r}")


__all__ = ["arch_kwargs", "build_model", "get_arch", "list_archs", "load_hf_model", "load_weights",
           "register_arch"]
