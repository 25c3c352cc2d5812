"""Save and load models as ``model.safetensors`` + ``manifest.json``; never pickles.

Sparse floating tensors are stored compactly when that is smaller than dense: ``name::mask`` (uint8,
``numpy.packbits`` of the flattened "element is not zero" mask, by bit pattern, so ``-0.0`` is kept) and
``name::values`` (the nonzero elements, same dtype), so pruning shows up in bytes on disk. Tensors that
share storage (tied weights) are stored once and recorded as aliases.

Codecs (the hook for formats the exporter does not know, e.g. quantized weights): a package registers a
:class:`Codec` with :func:`slimkit.codecs.register_codec`. At save, for every module that is an instance of one of the
codec's ``module_types``, ``codec.encode(module, prefix)`` may claim some of that module's state entries
(full state names) and return for each the tensors to store (``name::<part>``) plus a JSON-able ``info``;
unclaimed entries are stored as usual. At load, ``codec.decode(parts, info, state)`` returns the tensor
(``state`` holds every non-codec entry, already decoded, e.g. the scales a quantized weight needs). The
manifest names the codec and the module that registers it (imported on load, only under ``slimkit.``), so
a checkpoint loads in a fresh process. Codecs are how packed int8/int4/log/binary weights are saved
(see ``slimkit.passes.quantize.checkpoint``).

manifest.json::

    {"format_version": 1, "torch": "2.x", "sha256": <of model.safetensors>, "spec": {...},
     "tensors": {name: {"encoding": "dense"|"bitmask"|"alias"|"codec", "shape": [...], "dtype": "float32",
                        "alias_of": name (alias only),
                        "codec": name, "codec_module": "slimkit....", "parts": [...], "info": {...} (codec only)}},
     "module_shapes": {module name: {"class": ..., "in_channels": ..., ...}}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import atomic_write, atomic_write_json
from slimkit.codecs import Codec, get_codec, register_codec, registered_codecs
from slimkit.errors import ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "MANIFEST", "WEIGHTS", "Codec", "encoded_state", "load_manifest", "load_model",
           "load_state", "register_codec", "save_model"]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _encode_modules(model: nn.Module) -> dict[str, tuple[Codec, dict[str, torch.Tensor], dict[str, Any]]]:
    """Entries claimed by codecs: state name -> (codec, parts, info)."""
    out: dict[str, tuple[Codec, dict[str, torch.Tensor], dict[str, Any]]] = {}
    codecs = registered_codecs()
    if not codecs:
        return out
    for prefix, module in model.named_modules():
        for codec in codecs:
            if isinstance(module, codec.module_types):
                for key, (parts, info) in codec.encode(module, prefix).items():
                    if key not in out:
                        out[key] = (codec, {k: v.detach().cpu().contiguous() for k, v in parts.items()}, info)
    return out


def encoded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as :func:`load_state` will return it after :func:`save_model`: entries that a
    codec stores are encoded and decoded in memory (e.g. a fake-quantized weight becomes its quantized value)."""
    state = dict(model.state_dict())
    claimed = _encode_modules(model)
    plain = {k: v for k, v in state.items() if k not in claimed}
    for key, (codec, parts, info) in claimed.items():
        state[key] = codec.decode(parts, info, plain)
    return state


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nonzero_mask(t: torch.Tensor) -> torch.Tensor:
    """Elements whose bit pattern is not all zeros (keeps -0.0 and NaN as values)."""
    flat = t.reshape(-1)
    return flat.view(_INT_VIEW[t.element_size()]) != 0


def _encode(t: torch.Tensor, compact: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """Encoding and stored tensors for one state tensor."""
    import numpy as np

    t = t.detach().cpu().contiguous()
    if compact and t.is_floating_point() and t.numel() > 0 and t.element_size() in _INT_VIEW:
        mask = _nonzero_mask(t)
        nnz = int(mask.sum())
        if math.ceil(t.numel() / 8) + nnz * t.element_size() < t.numel() * t.element_size():
            packed = torch.from_numpy(np.packbits(mask.numpy()))
            return "bitmask", {"mask": packed, "values": t.reshape(-1)[mask].clone()}
    return "dense", {"": t.clone()}


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype] | None:
    """Identity of a tensor's memory (equal for tied weights); None when empty or without plain storage."""
    if not t.numel():
        return None
    try:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: nn.Module | dict[str, torch.Tensor], directory: str | os.PathLike[str], *,
               spec: dict[str, Any] | None = None, compact: bool = True) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/manifest.json`` (each atomically, the
    manifest last). ``spec`` is an opaque dict telling how to rebuild the architecture (e.g. the recipe's
    model section); ``compact`` stores sparse tensors as bitmask + values and lets registered codecs store
    the entries they claim (e.g. packed quantized weights). Returns the weights file."""
    from safetensors.torch import save_file

    from slimkit.exporters.manifest import module_shapes

    directory = Path(directory)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    claimed = _encode_modules(model) if isinstance(model, nn.Module) and compact else {}
    for name, (codec, parts, info) in claimed.items():
        t = state.get(name)
        if t is None:
            raise ModelLoadError(f"codec '{codec.name}' claimed '{name}', which is not in the state dict.")
        for suffix, part in parts.items():
            stored[f"{name}::{suffix}"] = part
        entries[name] = {"encoding": "codec", "codec": codec.name, "codec_module": codec.module,
                         "parts": sorted(parts), "info": info, "shape": list(t.shape),
                         "dtype": _dtype_name(t.dtype)}
        key = _storage_key(t)
        if key is not None:
            seen.setdefault(key, name)
    for name, t in state.items():
        if name in claimed:
            continue
        if not isinstance(t, torch.Tensor):
            raise ModelLoadError(f"state entry '{name}' is a {type(t).__name__}, not a tensor; cannot save it.")
        if "::" in name:
            raise ModelLoadError(f"state name '{name}' contains '::', which the format reserves.")
        entry: dict[str, Any] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        key = _storage_key(t)
        if key is not None and key in seen:
            entries[name] = {"encoding": "alias", "alias_of": seen[key], **entry}
            continue
        if key is not None:
            seen[key] = name
        encoding, parts = _encode(t, compact)
        for suffix, part in parts.items():
            stored[f"{name}::{suffix}" if suffix else name] = part
        entries[name] = {"encoding": encoding, **entry}
    weights = atomic_write(directory / WEIGHTS,
                           lambda p: save_file(stored, str(p), metadata={"format": "pt", "slimkit": "1"}))
    manifest = {
        "format_version": FORMAT_VERSION,
        "torch": torch.__version__,
        "sha256": _file_sha256(weights),
        "spec": spec,
        "tensors": entries,
        "module_shapes": module_shapes(model) if isinstance(model, nn.Module) else {},
    }
    atomic_write_json(directory / MANIFEST, manifest)
    log.info("saved %d tensors to %s (%d bytes)", len(entries), weights, weights.stat().st_size)
    return weights


def load_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` (ModelLoadError if missing, malformed or of a newer format)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"no {MANIFEST} in {directory}", hint="Save the model with slimkit.exporters.save_model.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", hint="The manifest is truncated or corrupt.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise ModelLoadError(f"{path} is not a slimkit manifest (no 'tensors' table).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(f"{path} has format_version {version!r}; this slimkit reads up to {FORMAT_VERSION}.",
                             hint="Upgrade slimkit.")
    return manifest


_MAX_NUMEL = 1 << 40


def _entry_shape_dtype(name: str, entry: Any) -> tuple[tuple[int, ...], torch.dtype]:
    """The manifest entry's shape and dtype, checked (a list of non-negative ints with a sane element count, a
    torch dtype name); ModelLoadError for anything else, so a hostile manifest never reaches torch or numpy."""
    if not isinstance(entry, dict):
        raise ModelLoadError(f"tensor '{name}' has a malformed manifest entry ({type(entry).__name__}).")
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape) \
            or math.prod(shape) > _MAX_NUMEL:
        raise ModelLoadError(f"tensor '{name}' has an impossible shape {str(shape)[:80]} in the manifest.")
    dtype = getattr(torch, entry["dtype"], None) if isinstance(entry.get("dtype"), str) else None
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(f"tensor '{name}' has unknown dtype {str(entry.get('dtype'))[:40]!r} in the manifest.")
    return tuple(shape), dtype


def _decode(name: str, entry: dict[str, Any], stored: dict[str, torch.Tensor]) -> torch.Tensor:
    import numpy as np

    shape, dtype = _entry_shape_dtype(name, entry)
    numel = math.prod(shape)
    encoding = entry.get("encoding")
    if encoding == "dense":
        t = stored.get(name)
        if t is None or tuple(t.shape) != shape or t.dtype != dtype:
            raise ModelLoadError(f"tensor '{name}' is missing or does not match its manifest entry.")
        return t
    if encoding == "bitmask":
        packed, values = stored.get(f"{name}::mask"), stored.get(f"{name}::values")
        if packed is None or values is None or packed.dtype != torch.uint8 or values.dtype != dtype \
                or packed.numel() != math.ceil(numel / 8):
            raise ModelLoadError(f"sparse tensor '{name}' is missing or malformed.")
        mask = torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool))
        if int(mask.sum()) != values.numel():
            raise ModelLoadError(f"sparse tensor '{name}': the mask marks {int(mask.sum())} values, "
                                 f"{values.numel()} are stored.")
        out = torch.zeros(numel, dtype=dtype)
        out[mask] = values
        return out.reshape(shape)
    raise ModelLoadError(f"tensor '{name}' has unknown encoding {encoding!r}.")


def _decode_codec(name: str, entry: dict[str, Any], stored: dict[str, torch.Tensor],
                  plain: dict[str, torch.Tensor]) -> torch.Tensor:
    codec = get_codec(str(entry.get("codec")), entry.get("codec_module"))
    parts = {}
    for suffix in entry.get("parts") or []:
        part = stored.get(f"{name}::{suffix}")
        if part is None:
            raise ModelLoadError(f"tensor '{name}' ({codec.name}) is missing its stored part '{suffix}'.")
        parts[suffix] = part
    try:
        t = codec.decode(parts, dict(entry.get("info") or {}), plain)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"tensor '{name}' cannot be decoded by codec '{codec.name}': {exc}") from None
    if list(t.shape) != list(entry.get("shape", [])):
        raise ModelLoadError(f"tensor '{name}' decoded to shape {list(t.shape)}, the manifest says "
                             f"{entry.get('shape')}.")
    return t


def load_state(directory: str | os.PathLike[str], *, verify: bool = True) -> dict[str, torch.Tensor]:
    """Decode ``model.safetensors`` back to the exact dense state dict. ``verify`` checks the file's
    SHA-256 against the manifest. A truncated, tampered or inconsistent file raises ModelLoadError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = load_manifest(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise ModelLoadError(f"no {WEIGHTS} in {directory}")
    if verify and manifest.get("sha256") and _file_sha256(path) != manifest["sha256"]:
        raise ModelLoadError(f"{path} does not match the checksum in its manifest (truncated or modified).",
                             hint="Save the model again.")
    try:
        stored = dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}",
                             hint="The file is truncated or not a safetensors file; save it again.") from None
    state: dict[str, torch.Tensor] = {}
    aliases = {}
    coded = {}
    for name, entry in manifest["tensors"].items():
        _entry_shape_dtype(name, entry)
        if entry.get("encoding") == "alias":
            aliases[name] = entry.get("alias_of")
        elif entry.get("encoding") == "codec":
            coded[name] = entry
        else:
            state[name] = _decode(name, entry, stored)
    plain = dict(state)
    for name, entry in coded.items():
        state[name] = _decode_codec(name, entry, stored, plain)
    for name, target in aliases.items():
        if not isinstance(target, str) or target not in state or target in aliases:
            raise ModelLoadError(f"tensor '{name}' aliases {str(target)[:80]!r}, which is not stored.")
        shape, dtype = _entry_shape_dtype(name, manifest["tensors"][name])
        if tuple(state[target].shape) != shape or state[target].dtype != dtype:
            raise ModelLoadError(f"tensor '{name}' aliases '{target}', whose shape or dtype differs from its entry.")
        state[name] = state[target]
    used = {k.split("::", 1)[0] for k in stored}
    if used - set(state):
        raise ModelLoadError(f"{path} stores tensors its manifest does not list: {sorted(used - set(state))[:5]}",
                             hint="The manifest is truncated or modified; save the model again.")
    return state


def _fit_other_tensors(model: nn.Module, state: dict[str, torch.Tensor], shaped: set[str]) -> None:
    """Give parameters/buffers outside the recorded layers (e.g. a layer-scale vector) the saved shape."""
    own = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for name, t in state.items():
        cur = own.get(name)
        if cur is None or tuple(cur.shape) == tuple(t.shape):
            continue
        module_name, _, attr = name.rpartition(".")
        if module_name in shaped:
            continue
        module = model.get_submodule(module_name) if module_name else model
        new = torch.empty(t.shape, dtype=cur.dtype, device=cur.device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(new, requires_grad=cur.requires_grad)
        elif attr in module._buffers:
            module._buffers[attr] = new
        log.info("resized %s from %s to %s", name, tuple(cur.shape), tuple(t.shape))


def load_model(directory: str | os.PathLike[str], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """Rebuild a saved model: ``build(spec)`` makes the architecture, layers whose recorded shapes differ
    are replaced by resized instances of the same class, then the state is loaded strictly."""
    manifest = load_manifest(directory)
    state = load_state(directory)
    model = build(manifest.get("spec") or {})
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"the build function returned {type(model).__name__}, not an nn.Module.")
    from slimkit.exporters.manifest import resize_to_shapes

    shapes = manifest.get("module_shapes") or {}
    resize_to_shapes(model, shapes)
    _fit_other_tensors(model, state, set(shapes))
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the saved weights do not fit the rebuilt model: {str(exc).splitlines()[0]} "
                             f"{' '.join(str(exc).split())[:400]}",
                             hint="Check that the spec builds the saved architecture.") from None
    return model
