"""The architecture registry: a name -> factory table that recipes refer to as ``model.arch``.

A factory is a class or function called as ``factory(*, input_shape, num_classes, **kwargs)`` and returning
an ``nn.Module``. Modules that define architectures are listed once in ``_ARCH_MODULES`` and imported on
first lookup, so ``import slimkit`` stays light.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from slimkit.errors import ConfigError, did_you_mean

F = TypeVar("F", bound=Callable[..., nn.Module])

_ARCHS: dict[str, Callable[..., nn.Module]] = {}
# Modules whose import registers architectures. Add yours here.
_ARCH_MODULES: list[str] = ["slimkit.models.archs", "slimkit.models.zoo.registered"]
_loaded = False


def register_arch(name: str) -> Callable[[F], F]:
    """Decorator: register ``factory(*, input_shape, num_classes, **kwargs) -> nn.Module`` under ``name``.
    Registering a second factory under a taken name is an error."""

    def deco(factory: F) -> F:
        params = inspect.signature(factory).parameters
        for needed in ("input_shape", "num_classes"):
            if needed not in params:
                raise TypeError(f"architecture factory {factory!r} must accept '{needed}'")
        old = _ARCHS.get(name)
        if old is not None and old is not factory and getattr(old, "__qualname__", None) != factory.__qualname__:
            raise ValueError(f"architecture '{name}' is already registered by {old!r}")
        _ARCHS[name] = factory
        return factory

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for mod in _ARCH_MODULES:
            importlib.import_module(mod)
        _loaded = True


def list_archs() -> list[str]:
    """Names of every registered architecture, sorted."""
    _ensure_loaded()
    return sorted(_ARCHS)


def get_arch(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``. Unknown names raise :class:`ConfigError` with a did-you-mean and
    the list of known architectures."""
    _ensure_loaded()
    try:
        return _ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown architecture '{name}'.{did_you_mean(name, _ARCHS)}",
            hint=f"Known architectures: {', '.join(sorted(_ARCHS))}. Or set model.entry_point to "
                 "'package.module:factory' for your own model.",
        ) from None


def arch_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments ``name`` accepts (besides input_shape/num_classes) with their defaults."""
    params = inspect.signature(get_arch(name)).parameters
    return {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params.items()
            if k not in ("input_shape", "num_classes", "self")
            and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
