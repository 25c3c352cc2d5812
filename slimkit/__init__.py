"""slimkit: make trained PyTorch models smaller and faster, with numbers you can trust.

Public API: the verbs (prune_, quantize_, lowrank_, distill, finetune, evaluate, export, run_recipe, search)
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

# Config classes, loaded when first named: public name -> module
_LAZY: dict[str, str] = {
    "FinetuneConfig": "slimkit.config.finetune",
    **{n: "slimkit.config.prune" for n in ("MagnitudePruneConfig", "WandaPruneConfig", "SparseGPTConfig")},
    **{n: "slimkit.config.quantize" for n in ("Int", "LogQuant", "Binary", "PTQConfig", "MixedPrecision", "DynamicConfig", "WeightOnlyConfig", "QATConfig", "LogQuantConfig", "BinaryConfig", "PrecisionConfig", "FP16Config", "BF16Config")},
    "DistillConfig": "slimkit.config.distill", "SVDConfig": "slimkit.config.lowrank",
    "FeatureDistillConfig": "slimkit.config.distill", "MutualDistillConfig": "slimkit.config.distill",
    "StructuredPruneConfig": "slimkit.config.structured", "NMSparsityConfig": "slimkit.config.structured",
    "PostTrainPruneConfig": "slimkit.config.posttrain",
    "OrtInt8Config": "slimkit.config.quantize_ort",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("models", "data", "evaluation", "exporters", "search"):  # search: callable, slimkit/search/runner.py
        return importlib.import_module(f"slimkit.{name}")
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


__all__ = [
    "Recipe", "SlimkitError", "apply_pass", "distill", "evaluate", "export", "finetune", "load_recipe",
    "lowrank_", "parse_recipe", "prune_", "quantize_", "run_recipe", "search", *sorted(_LAZY),
]
