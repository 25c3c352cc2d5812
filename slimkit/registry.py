"""One place that lists every pass: config type -> handler.

A pass module registers its handler with :func:`register_pass`. Adding a technique is adding a
config class and a handler, nothing else. Recipes find configs by ``kind`` (the stage key) and
``method``; verbs find handlers by the config's type.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimkit.errors import RecipeError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from slimkit.config.base import PassConfig
    from slimkit.context import PassContext

# Every module that registers passes. Imported on first use of the registry, not at `import slimkit`.
_PASS_MODULES = (
    "slimkit.passes.prune.unstructured",
    "slimkit.passes.finetune.loop",
    "slimkit.passes.quantize.ptq", "slimkit.passes.quantize.qat", "slimkit.passes.quantize.dynamic", "slimkit.passes.quantize.weight_only", "slimkit.passes.quantize.precision",
    "slimkit.passes.lowrank.svd", "slimkit.passes.distill.trainer",
    "slimkit.passes.prune.structured", "slimkit.passes.prune.nm", "slimkit.passes.prune.oneshot",
    "slimkit.passes.prune.posttrain",
)

Handler = Callable[["nn.Module", "PassConfig", "PassContext"], "nn.Module"]


@dataclass(frozen=True)
class PassSpec:
    kind: str
    method: str
    config_cls: type[PassConfig]
    handler: Handler
    needs: frozenset[str] = field(default_factory=frozenset)
    """Context items the handler cannot run without: example_inputs, calibration, train_loader."""
    default: bool = False
    """Whether this method is used when a recipe stage gives no ``method``."""
    rebuild: Callable[..., Any] | None = None
    """For passes that change the module structure: ``rebuild(model, cfg, manifest) -> model`` redoes the
    structural change without data or compute, so a saved checkpoint of this stage can be loaded on resume."""


_BY_CONFIG: dict[type, PassSpec] = {}
_BY_KIND: dict[str, dict[str, PassSpec]] = {}
_loaded = False


def register_pass(
    config_cls: type[PassConfig], *, needs: tuple[str, ...] = (), default: bool = False,
    rebuild: Callable[..., Any] | None = None,
) -> Callable[[Handler], Handler]:
    """Decorator: ``@register_pass(MagnitudePruneConfig, default=True)`` on ``def handler(model, cfg, ctx)``."""

    def wrap(fn: Handler) -> Handler:
        kind = config_cls.kind
        method_field = config_cls.model_fields["method"]
        method = method_field.default
        if not kind or not isinstance(method, str):
            raise TypeError(f"{config_cls.__name__} needs a ClassVar kind and a default method")
        spec = PassSpec(kind, method, config_cls, fn, frozenset(needs), default, rebuild)
        _BY_CONFIG[config_cls] = spec
        _BY_KIND.setdefault(kind, {})[method] = spec
        return fn

    return wrap


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _PASS_MODULES:
        importlib.import_module(name)


def spec_for(config: PassConfig) -> PassSpec:
    _ensure_loaded()
    spec = _BY_CONFIG.get(type(config))
    if spec is None:
        raise RecipeError(f"No pass is registered for {type(config).__name__}.")
    return spec


def kinds() -> dict[str, dict[str, PassSpec]]:
    _ensure_loaded()
    return _BY_KIND


def all_specs() -> list[PassSpec]:
    _ensure_loaded()
    return list(_BY_CONFIG.values())


def parse_stage(stage: Any, index: int) -> tuple[PassConfig | None, list[tuple[str, str]]]:
    """Parse one recipe stage ``{kind: {method: ..., ...}}`` into its config, or return problems."""
    from slimkit.config.base import build

    _ensure_loaded()
    where = f"stages[{index}]"
    if not isinstance(stage, dict) or len(stage) != 1:
        kinds_ = ", ".join(sorted(_BY_KIND))
        return None, [(where, f"a stage is a mapping with exactly one pass name ({kinds_}), got {stage!r}")]
    (kind, body), = stage.items()
    if kind not in _BY_KIND:
        return None, [(where, f"unknown pass '{kind}'.{did_you_mean(str(kind), _BY_KIND)} "
                              f"Known passes: {', '.join(sorted(_BY_KIND))}.")]
    body = {} if body is None else body
    if not isinstance(body, dict):
        return None, [(f"{where}.{kind}", f"must be a mapping of settings, got {body!r}")]
    methods = _BY_KIND[kind]
    method = body.get("method")
    if method is None:
        defaults = [s for s in methods.values() if s.default] or list(methods.values())[:1]
        spec = defaults[0]
    elif method not in methods:
        return None, [(f"{where}.{kind}.method", f"unknown method '{method}'.{did_you_mean(str(method), methods)} "
                                                 f"Known methods: {', '.join(sorted(methods))}.")]
    else:
        spec = methods[method]
    try:
        return build(spec.config_cls, body, prefix=f"{where}.{kind}"), []
    except RecipeError as exc:
        return None, exc.problems
