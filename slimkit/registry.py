"""The one place that knows every pass: config type -> handler, and :func:`apply_pass`, which runs one.

Adding a technique is adding a config class and a handler, nothing else:

- the config (a :class:`slimkit.config.base.PassConfig` in a module of ``slimkit/config/``, named in that
  module's ``__all__``) says its recipe ``kind``, its ``method`` and ``handler_module``, the module that
  registers its handler;
- the handler module decorates ``def handler(model, cfg, ctx) -> nn.Module`` with :func:`register_pass`,
  which also declares what the handler needs (``needs``), how a checkpoint of it is rebuilt (``rebuild``) and
  what the pass leaves in a model that exporters must know about (``export``, an :class:`ExportForm`).

The verbs, the recipe parser, the runner, the CLI's method lists and ``slimkit.<ConfigName>`` are all read
from here. Config modules are found by walking ``slimkit.config`` (cheap: pydantic models only); handler
modules are imported on the first use of the registry, not at ``import slimkit``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimkit.errors import ConfigError, RecipeError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from slimkit.config.base import PassConfig
    from slimkit.context import PassContext

Handler = Callable[["nn.Module", "PassConfig", "PassContext"], "nn.Module"]
Needs = Iterable[str] | Callable[["PassConfig"], Iterable[str]]


@dataclass(frozen=True)
class ExportForm:
    """What a pass leaves in a model, as the exporters need to know it (``register_pass(..., export=...)``).

    name: a short name (``fakequant``, ``packed``, ``half``, ...), reported as the export ``source``.
    detect: ``detect(model) -> bool``, whether ``model`` holds this form.
    to_float: ``to_float(model) -> None``, in place on a copy: replace the form by its float32 equivalent
        (quantized weights dequantized, quantizers and casting hooks removed).
    int8: ``"qdq"`` when the model carries its own scales, exported as QDQ ONNX with them; ``"requantize"``
        when onnxruntime quantizes the float equivalent instead.
    note: a sentence added to the export note when int8 ONNX of this form is made (e.g. what is lost).
    float_note: the export note of fp32/fp16 ONNX of this form (``{precision}`` is filled in); empty for
        the default (the float equivalent was exported, a quantized ONNX needs precision int8).
    runtime_note: why the PyTorch latency of such a model is not its deployed latency (for the report).
    """

    name: str
    detect: Callable[[nn.Module], bool]
    to_float: Callable[[nn.Module], None]
    int8: str = "requantize"
    note: str = ""
    float_note: str = ""
    runtime_note: str = ""


@dataclass(frozen=True)
class PassSpec:
    kind: str
    method: str
    config_cls: type[PassConfig]
    handler: Handler
    needs: Needs = field(default_factory=frozenset)
    """Context items the handler cannot run without (example_inputs, calibration, train_loader, teacher), or
    ``needs(cfg) -> names`` when they depend on the config. See :meth:`required`."""
    default: bool = False
    """Whether this method is used when a recipe stage gives no ``method``."""
    rebuild: Callable[..., Any] | None = None
    """For passes that change the module structure: ``rebuild(model, cfg, manifest) -> model`` redoes the
    structural change without data or compute, so a saved checkpoint of this stage can be loaded on resume."""
    export: tuple[ExportForm, ...] = ()
    """What this pass leaves in a model, for the exporters (see :class:`ExportForm`)."""

    def required(self, cfg: PassConfig) -> list[str]:
        """What the handler needs for ``cfg``: its ``needs``, plus ``train_loader`` whenever ``cfg`` has a
        ``finetune`` section (the same rule for every pass)."""
        names = set(self.needs(cfg) if callable(self.needs) else self.needs)
        if getattr(cfg, "finetune", None) is not None:
            names.add("train_loader")
        return sorted(names)


_BY_CONFIG: dict[type, PassSpec] = {}
_BY_KIND: dict[str, dict[str, PassSpec]] = {}
_FORMS: dict[str, ExportForm] = {}
_loaded = False


def register_pass(
    config_cls: type[PassConfig], *, needs: Needs = (), default: bool = False,
    rebuild: Callable[..., Any] | None = None, export: ExportForm | Iterable[ExportForm] = (),
) -> Callable[[Handler], Handler]:
    """Decorator: ``@register_pass(MagnitudePruneConfig, default=True)`` on ``def handler(model, cfg, ctx)``."""

    def wrap(fn: Handler) -> Handler:
        kind = config_cls.kind
        method_field = config_cls.model_fields["method"]
        method = method_field.default
        if not kind or not isinstance(method, str):
            raise TypeError(f"{config_cls.__name__} needs a ClassVar kind and a default method")
        forms = (export,) if isinstance(export, ExportForm) else tuple(export)
        spec = PassSpec(kind, method, config_cls, fn, needs if callable(needs) else frozenset(needs), default,
                        rebuild, forms)
        _BY_CONFIG[config_cls] = spec
        _BY_KIND.setdefault(kind, {})[method] = spec
        for form in forms:
            _FORMS.setdefault(form.name, form)
        return fn

    return wrap


def unregister_pass(config_cls: type[PassConfig]) -> None:
    """Remove the pass registered for ``config_cls`` (e.g. one a test or a plugin registered for a while)."""
    spec = _BY_CONFIG.pop(config_cls, None)
    if spec is not None and _BY_KIND.get(spec.kind, {}).get(spec.method) is spec:
        del _BY_KIND[spec.kind][spec.method]
        if not _BY_KIND[spec.kind]:
            del _BY_KIND[spec.kind]


def config_modules() -> list[Any]:
    """The modules of ``slimkit.config`` that hold technique configs: those defining a class that names a
    ``handler_module`` (a pass) or an ``exporter_module`` (an export quantizer)."""
    import slimkit.config as package

    out = []
    for info in pkgutil.iter_modules(package.__path__):
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        classes = [v for v in vars(mod).values() if isinstance(v, type) and v.__module__ == mod.__name__]
        if any(getattr(c, "handler_module", "") or getattr(c, "exporter_module", "") for c in classes):
            out.append(mod)
    return out


def public_configs() -> dict[str, str]:
    """Public config name -> module, for ``slimkit.<Name>``: the ``__all__`` of every technique config module."""
    return {name: mod.__name__ for mod in config_modules() for name in getattr(mod, "__all__", ())}


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    handlers = {getattr(cls, "handler_module", "") for mod in config_modules() for cls in vars(mod).values()
                if isinstance(cls, type)}
    for name in sorted(handlers - {""}):
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


def methods(kind: str) -> list[str]:
    """The registered method names of one ``kind`` (e.g. every ``quantize`` method), sorted."""
    return sorted(kinds().get(kind, {}))


def all_specs() -> list[PassSpec]:
    _ensure_loaded()
    return list(_BY_CONFIG.values())


def export_forms() -> list[ExportForm]:
    """Every registered :class:`ExportForm`, in registration order."""
    _ensure_loaded()
    return list(_FORMS.values())


def apply_pass(model: nn.Module, config: PassConfig, ctx: PassContext | None = None, **kwargs: Any) -> nn.Module:
    """Run any registered pass. Keyword arguments fill a :class:`PassContext`. What the pass needs
    (:meth:`PassSpec.required`) is checked before the handler touches the model."""
    from torch import nn

    from slimkit.config.base import PassConfig
    from slimkit.context import PassContext, as_inputs

    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(config, PassConfig):
        raise ConfigError(f"expected a slimkit config object, got {type(config).__name__}.",
                          hint="Build one, e.g. slimkit.MagnitudePruneConfig(sparsity=0.8).")
    spec = spec_for(config)
    if ctx is None:
        if "example_inputs" in kwargs:
            kwargs["example_inputs"] = as_inputs(kwargs["example_inputs"])
        ctx = PassContext(**kwargs)
    name = f"{spec.kind}(method={spec.method})"
    if getattr(config, "finetune", None) is not None and ctx.train_loader is None:
        raise ConfigError(f"{name} has a finetune section but no train loader was given (train_loader=None).",
                          hint="Pass train_loader=... to the verb, give the recipe a data section, or remove "
                               "finetune from the config.")
    ctx.require(*spec.required(config), pass_name=name)
    out = spec.handler(model, config, ctx)
    return model if out is None else out


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
    methods_ = _BY_KIND[kind]
    method = body.get("method")
    if method is None:
        defaults = [s for s in methods_.values() if s.default] or list(methods_.values())[:1]
        spec = defaults[0]
    elif not isinstance(method, str):
        return None, [(f"{where}.{kind}.method", f"must be a method name (one of {', '.join(sorted(methods_))}), "
                                                 f"got {type(method).__name__}")]
    elif method not in methods_:
        return None, [(f"{where}.{kind}.method", f"unknown method '{method}'.{did_you_mean(str(method), methods_)} "
                                                 f"Known methods: {', '.join(sorted(methods_))}.")]
    else:
        spec = methods_[method]
    try:
        return build(spec.config_cls, body, prefix=f"{where}.{kind}"), []
    except RecipeError as exc:
        return None, exc.problems
