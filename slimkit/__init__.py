"""slimkit: make trained PyTorch models smaller and faster, with numbers you can trust.

Public API: the verbs (prune_, quantize_, lowrank_, distill, finetune, evaluate, export, run_recipe, search, auto)
and the config classes. Heavy dependencies (onnxruntime, transformers, ray, optuna) load on use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from slimkit.api import (
    apply_pass,
    distill,
    evaluate,
    export,
    finetune,
    lowrank_,
    prune_,
    quantize_,
    run_recipe,
)
from slimkit.config.recipe import Recipe, load_recipe, parse_recipe
from slimkit.errors import SlimkitError

_API = ["Recipe", "SlimkitError", "apply_pass", "auto", "distill", "evaluate", "export", "finetune", "load_recipe",
        "lowrank_", "parse_recipe", "prune_", "quantize_", "run_recipe", "search"]


def __getattr__(name: str) -> Any:
    # Config classes load when first named; their names are the registry's (slimkit.registry.public_configs),
    # which also gives `_LAZY` (name -> module) and `__all__`.
    if name in ("_LAZY", "__all__"):
        from slimkit.registry import public_configs

        return public_configs() if name == "_LAZY" else [*_API, *sorted(public_configs())]
    if name in ("models", "data", "evaluation", "exporters", "search", "auto"):  # search, auto: callable packages
        return importlib.import_module(f"slimkit.{name}")
    if not name.startswith("_"):
        from slimkit.registry import public_configs

        module = public_configs().get(name)
        if module is not None:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__getattr__("__all__")))
