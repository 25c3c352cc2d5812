"""Build a model from a ``ModelConfig`` (built-in arch, Python entry point or Hugging Face) and load
weights into it safely."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, ModelLoadError
from slimkit.models.registry import get_arch, list_archs

log = logging.getLogger(__name__)

_SHOW = 5  # how many offending keys an error lists


def _accepted(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    params = inspect.signature(factory).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [k for k, p in params.items() if k != "self" and p.kind in
             (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return names, var_kw


def _call_factory(factory: Callable[..., Any], what: str, kwargs: dict[str, Any], *,
                  input_shape: Sequence[int] | None, num_classes: int | None, strict_shape: bool) -> Any:
    names, var_kw = _accepted(factory)
    reserved = {"input_shape", "num_classes"} & set(kwargs)
    if reserved:
        raise ConfigError(f"{what}: {', '.join(sorted(reserved))} come(s) from the data, not from model.kwargs.",
                          hint="Remove them from model.kwargs.")
    unknown = [k for k in kwargs if k not in names] if not var_kw else []
    if unknown:
        accepted = [n for n in names if n not in ("input_shape", "num_classes")]
        raise ConfigError(f"{what} does not accept {', '.join(repr(k) for k in unknown)}.",
                          hint=f"Accepted kwargs: {', '.join(accepted) or 'none'}.")
    call = dict(kwargs)
    for key, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if key in names or (var_kw and strict_shape):
            if value is None:
                raise ConfigError(f"{what} needs {key}; pass it to build_model.")
            call[key] = tuple(value) if key == "input_shape" else int(value)
    try:
        return factory(**call)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} rejected model.kwargs {kwargs}: {exc}",
                          hint=f"Accepted kwargs: {', '.join(n for n in names if n not in ('input_shape', 'num_classes'))}.") from None


def memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


@dataclass(frozen=True)
class Footprint:
    """What a model needs in memory, measured on the ``meta`` device (nothing allocated): ``weights`` (bytes of
    parameters and buffers), ``params`` (count), and at batch 1 the bytes of its ``largest`` activation and
    the ``total`` of its leaf modules' new outputs (about what training keeps for the backward pass)."""

    weights: int
    params: int
    largest: int
    total: int


def _meta_footprint(factory: Callable[..., Any], what: str, kwargs: dict[str, Any],
                    input_shape: Sequence[int], num_classes: int | None) -> Footprint | None:
    try:
        with torch.device("meta"):
            meta = _call_factory(factory, what, kwargs, input_shape=input_shape, num_classes=num_classes,
                                 strict_shape=True)
    except Exception as exc:  # noqa: BLE001 - the real build raises the real error, if any
        log.debug("%s: no meta-device size estimate (%s)", what, exc)
        return None
    if not isinstance(meta, nn.Module):
        return None
    weights = sum(t.numel() * t.element_size() for t in (*meta.parameters(), *meta.buffers()))
    acts = [0, 0]

    def hook(m: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            n = out.numel() * out.element_size()
            acts[0] = max(acts[0], n)
            # the total counts each leaf's new tensor once: a container's output is a leaf's, an in-place
            # activation's is its input
            if not any(True for _ in m.children()) and not any(out is t for t in inputs):
                acts[1] += n

    handles = [m.register_forward_hook(hook) for m in meta.modules()]
    try:
        with torch.no_grad():
            meta(torch.empty((1, *input_shape), device="meta"))
    except Exception as exc:  # noqa: BLE001 - an op without a meta kernel: the estimate is only a pre-check
        log.debug("%s: no meta-device activation estimate (%s)", what, exc)
    finally:
        for h in handles:
            h.remove()
    return Footprint(weights, sum(p.numel() for p in meta.parameters()), acts[0], acts[1])


def arch_footprint(arch: str, kwargs: dict[str, Any], input_shape: Sequence[int],
                   num_classes: int | None) -> Footprint | None:
    """The :class:`Footprint` of a registered ``arch`` built for ``input_shape`` (None when it cannot be built
    on the meta device)."""
    return _meta_footprint(get_arch(arch), f"arch '{arch}'", dict(kwargs), input_shape, num_classes)


def _check_fits(factory: Callable[..., Any], what: str, kwargs: dict[str, Any], input_shape: Sequence[int] | None,
                num_classes: int | None) -> None:
    """Build ``factory`` on the meta device (no memory) and refuse, before anything is allocated, a model
    whose parameters, or whose input and largest activation at batch 1, do not fit in this machine's memory."""
    import math

    limit = memory_bytes()
    if limit is None or input_shape is None:
        return
    in_bytes = math.prod(int(d) for d in input_shape) * 4
    if in_bytes > limit // 2:
        raise ConfigError(f"{what}: one input of shape {tuple(input_shape)} needs {_gb(in_bytes)}; this machine has "
                          f"{_gb(limit)} of memory.", hint="Use a smaller input size.")
    fp = _meta_footprint(factory, what, kwargs, input_shape, num_classes)
    if fp is None:
        return
    if fp.weights > limit // 2:
        raise ConfigError(f"{what} with model.kwargs {kwargs} has {fp.params:,} "
                          f"parameters ({_gb(fp.weights)}); this machine has {_gb(limit)} of memory.",
                          hint="Use smaller widths or depth.")
    if fp.weights + in_bytes + fp.largest > limit:
        raise ConfigError(f"{what} with model.kwargs {kwargs} and input {tuple(input_shape)} needs at least "
                          f"{_gb(fp.weights + in_bytes + fp.largest)} (weights and the largest activation at batch "
                          f"1); this machine has {_gb(limit)} of memory.", hint="Use smaller widths or input size.")


def _from_entry_point(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import module '{module_name}' for entry_point '{spec}': {exc}",
                             hint="Install the package or put it on PYTHONPATH; the form is 'package.module:factory'.") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"module '{module_name}' has no callable '{attr}' (entry_point '{spec}').")
    return factory


def build_model(cfg: Any, *, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                seed: int = 0) -> nn.Module:
    """Build the model ``cfg`` (a ``ModelConfig`` or a mapping of its fields) describes and load
    ``cfg.weights`` into it when given.

    - ``arch``: a registered architecture, called with ``input_shape``, ``num_classes`` and ``cfg.kwargs``.
    - ``entry_point``: ``'package.module:factory'``, called with ``cfg.kwargs`` (plus ``input_shape`` /
      ``num_classes`` when its signature names them); it must return an ``nn.Module``.
    - ``hf``: a local Hugging Face model directory or an installed offline model package (see
      :func:`slimkit.models.hf.load_hf_model`).

    Parameters are initialised under ``torch.manual_seed(seed)`` without disturbing the global RNG.
    Raises ConfigError for an unknown arch or bad kwargs, ModelLoadError when code or weights cannot load.
    """
    from slimkit.config.base import build
    from slimkit.config.recipe import ModelConfig

    if not isinstance(cfg, ModelConfig):
        cfg = build(ModelConfig, cfg, prefix="model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if cfg.arch is not None:
            if input_shape is None or num_classes is None:
                raise ConfigError(f"arch '{cfg.arch}' needs input_shape and num_classes (they come from the data).")
            what = f"arch '{cfg.arch}'"
            _check_fits(get_arch(cfg.arch), what, dict(cfg.kwargs), input_shape, num_classes)
            model = _call_factory(get_arch(cfg.arch), what, dict(cfg.kwargs),
                                  input_shape=input_shape, num_classes=num_classes, strict_shape=True)
        elif cfg.entry_point is not None:
            factory = _from_entry_point(cfg.entry_point)
            model = _call_factory(factory, f"entry_point '{cfg.entry_point}'", dict(cfg.kwargs),
                                  input_shape=input_shape, num_classes=num_classes, strict_shape=False)
        elif cfg.sentence_encoder:
            from slimkit.models.sentence import load_sentence_encoder

            model = load_sentence_encoder(cfg.hf, **dict(cfg.kwargs))
        else:
            from slimkit.models.hf import load_hf_model

            model = load_hf_model(cfg.hf, **dict(cfg.kwargs))
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{cfg.entry_point or cfg.arch or cfg.hf} returned {type(model).__name__}, "
                             "not a torch.nn.Module.")
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    return model


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel) or ``model.`` prefix that every key carries when the model's keys
    do not have it."""
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW else "")


def _kwargs_hint(path: str | Path) -> str:
    """How to build the model the weights were trained as: the kwargs recorded in a slimkit checkpoint's
    manifest.json beside the weights, when there is one."""
    import json

    base = ("Build the model with the same arch and keyword arguments it was trained with (recipe: "
            "model.kwargs; slimkit quantize: --arch-kwargs).")
    manifest = Path(str(path)).parent / "manifest.json"
    try:
        model = json.loads(manifest.read_text())["spec"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return base
    if not isinstance(model, dict) or not model.get("arch"):
        return base
    kwargs = json.dumps(model.get("kwargs") or {}, separators=(", ", ": "))
    return (f"{manifest} says these weights are arch {model['arch']!r} with kwargs {kwargs}: in a recipe set "
            f"model.kwargs to that; with slimkit quantize pass --arch-kwargs '{kwargs}'.")


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a state dict from ``path`` (``.safetensors``, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``) into ``model`` and return it.

    Every key and shape is checked before anything is copied: a mismatch raises ModelLoadError listing
    the first few missing, unexpected and mismatched keys, and leaves the model untouched. With
    ``strict=False`` missing and unexpected keys are logged instead (shape mismatches still raise).
    """
    from slimkit._io import load_state_dict_file

    state = load_state_dict_file(path)
    own = model.state_dict()
    state = _strip_prefix(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and strict:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {len(mismatched)}: {_listing(mismatched)}")
    if problems:
        raise ModelLoadError(f"weights in {path} do not fit {type(model).__name__}: " + "; ".join(problems) + ".",
                             hint=_kwargs_hint(path))
    if missing or unexpected:
        log.warning("loading %s: missing %s, unexpected %s", path, _listing(missing) or "none",
                    _listing(unexpected) or "none")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("loaded %d tensors from %s", len(state), path)
    return model


__all__ = ["Footprint", "arch_footprint", "build_model", "list_archs", "load_weights", "memory_bytes"]
