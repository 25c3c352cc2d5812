"""Do a recipe's model, weights and data fit together? Checked by ``slimkit validate`` and at the start of
every run, before any data is loaded or any training starts.

What is checked (each mismatch is one ``(path, message)`` problem of a RecipeError):

- the kind of input: a Hugging Face text model (token ids) against image data, or an image/tensor model
  against ``sentences``;
- an ``arch`` with ``weights``: the architecture is built for the data's input shape and classes (cheap: no
  forward pass) and every weight tensor's name and shape is compared (this also catches other ``kwargs``);
- a model built by an ``entry_point`` or an ``arch`` with weights: its first convolution's input channels and
  its last Linear layer's outputs against the data's channels and classes.

The data's facts come from its config alone (no dataset is read); where they are unknown (image-folder,
tensors) the check is skipped.

Memory (:func:`memory_problems`): a lower bound of what the run holds at once, compared with the memory
available now (``MemAvailable`` of /proc/meminfo; ``SLIMKIT_MEMORY_LIMIT``, in bytes, overrides it):

- the model's weights (measured on the ``meta`` device for an ``arch``, else the weights files' sizes) times
  the copies the run keeps: the baseline, the reference the stages are compared with and the working model
  (3), plus, for the most demanding stage, the gradients and optimizer moments of a training stage (+3 for
  Adam/AdamW, +2 for SGD) or the two quantized copies a mixed-precision PTQ stage scores (+2);
- one batch of inputs (``data.batch_size`` x the input's float32 bytes);
- the activations of one batch: every module's output when a stage trains (backward needs them all), else
  the largest one.

A run whose lower bound exceeds the available memory is refused before any data is loaded, with the sizes
and the largest ``data.batch_size`` that would fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.config.recipe import DataConfig, Recipe
from slimkit.errors import RecipeError, SlimkitError

__all__ = ["DataFacts", "MEMORY_LIMIT_ENV", "available_memory", "check_fit", "data_facts", "fit_problems",
           "memory_problems"]

MEMORY_LIMIT_ENV = "SLIMKIT_MEMORY_LIMIT"
"""Environment variable: the memory (bytes) the fit check assumes is available, instead of MemAvailable."""

_IMAGE_HINT = ("ImageNet models take 3-channel images: use data {name: sample-images} (photo crops; fidelity to the "
               "original model) or {name: fashion-mnist, channels: 3, image_size: 64, normalize: imagenet} with a "
               "model that has a head for 10 classes (entry_point: slimkit.models.pretrained:mobilenet_v2_imagenet)")


DataFacts = dict[str, Any]
"""``kind`` ("image", "text" or None), ``input_shape`` (C, H, W) or None, ``classes`` or None."""


def data_facts(cfg: DataConfig) -> DataFacts:
    """What the data gives, from its config alone."""
    if cfg.name == "digits":
        return dict(kind="image", input_shape=(1, 8, 8), classes=10)
    if cfg.name == "fashion-mnist":
        size = cfg.image_size or 28
        return dict(kind="image", input_shape=(cfg.channels or 1, size, size), classes=10)
    if cfg.name == "sample-images":
        size = cfg.image_size or 224
        return dict(kind="image", input_shape=(3, size, size), classes=1000)
    if cfg.name == "sentences":
        return dict(kind="text", input_shape=None, classes=None)
    if cfg.name == "image-folder":
        size = cfg.image_size or 32
        return dict(kind="image", input_shape=(3, size, size), classes=None)
    return dict(kind=None, input_shape=None, classes=None)


def _describe(cfg: DataConfig, facts: DataFacts) -> str:
    shape = facts.get("input_shape")
    what = f"{shape[0]}-channel {shape[1]}x{shape[2]} images" if shape else f"{facts.get('kind') or 'unknown'} inputs"
    classes = f", {facts['classes']} classes" if facts.get("classes") else ""
    return f"data '{cfg.name}' gives {what}{classes}"


def _first_conv_and_head(model: nn.Module) -> tuple[nn.Conv2d | None, nn.Linear | None]:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return conv, (linears[-1] if linears else None)


def _module_problems(model: nn.Module, cfg: DataConfig, facts: DataFacts) -> list[tuple[str, str]]:
    conv, head = _first_conv_and_head(model)
    shape, classes = facts.get("input_shape"), facts.get("classes")
    problems = []
    if conv is not None and shape is not None and conv.in_channels != shape[0]:
        problems.append(("model", f"the model's first convolution takes {conv.in_channels}-channel inputs, but "
                                  f"{_describe(cfg, facts)}."
                         + (f" {_IMAGE_HINT}." if conv.in_channels == 3 else "")))
    if head is not None and classes is not None and head.out_features != classes:
        problems.append(("model", f"the model's last Linear layer gives {head.out_features} outputs, but "
                                  f"{_describe(cfg, facts)}. Use a model with a {classes}-class head (e.g. an "
                                  "entry_point called with num_classes) or data with "
                                  f"{head.out_features} classes."))
    return problems


def fit_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Every mismatch between ``recipe.model`` (and its weights) and ``recipe.data``."""
    m, d = recipe.model, recipe.data
    facts = data_facts(d)
    kind = facts.get("kind")
    if m.hf is not None:
        image_model = str(m.kwargs.get("auto_class", "")).endswith("ImageClassification")
        if kind == "image" and not image_model:
            return [("data.name", f"model.hf {m.hf!r} is a text model (it takes token ids), but "
                                  f"{_describe(d, facts)}. Use data {{name: sentences}} (offline sentences; "
                                  "fidelity to the original model) with model.sentence_encoder: true.")]
        return []
    if kind == "text":
        return [("data.name", f"data 'sentences' gives token ids for a Hugging Face text model, but the model is "
                              f"{'arch ' + repr(m.arch) if m.arch else 'entry_point ' + repr(m.entry_point)}, which "
                              "takes image/tensor inputs. Use model.hf (e.g. sentence-transformers/all-MiniLM-L6-v2 "
                              "with sentence_encoder: true), or image data.")]
    if facts.get("input_shape") is None or (m.arch is not None and m.weights is None):
        return []  # unknown data shape, or an arch built for the data (always fits)
    from slimkit.models import build_model

    try:
        model = build_model(m, input_shape=facts["input_shape"], num_classes=facts.get("classes") or 10,
                            seed=recipe.seed)
    except SlimkitError as exc:
        problems: list[tuple[str, str]] = []
        if m.arch is not None and m.weights is not None:
            try:  # channels or classes: say so, rather than list every mismatched tensor
                problems = _module_problems(_weights_probe(m.weights), d, facts)
            except SlimkitError:
                pass
        return problems or [("model.weights" if m.weights is not None else "model", str(exc))]
    return _module_problems(model, d, facts)


def _weights_probe(weights: Any) -> nn.Module:
    """A stand-in whose first convolution and last Linear have the input channels and outputs that the
    weights' first 4-D and last 2-D tensors imply."""
    from slimkit._io import load_state_dict_file

    state = load_state_dict_file(weights)
    convs = [v for v in state.values() if getattr(v, "dim", lambda: 0)() == 4]
    mats = [v for v in state.values() if getattr(v, "dim", lambda: 0)() == 2]
    probe = nn.Sequential()
    if convs:
        probe.append(nn.Conv2d(int(convs[0].shape[1]), 1, 1))
    if mats:
        probe.append(nn.Linear(1, int(mats[-1].shape[0])))
    return probe


def check_fit(recipe: Recipe, *, source: str | None = None) -> None:
    """Raise RecipeError listing every mismatch of model, weights and data (see the module docstring)."""
    problems = fit_problems(recipe)
    from slimkit.context import resolve_device
    from slimkit.errors import DeviceError

    device = None
    try:
        device = resolve_device(recipe.device)
    except DeviceError as exc:
        problems.append(("device", f"{exc.message} {exc.hint}"))
    if not problems and (device is None or device.type == "cpu"):
        problems = memory_problems(recipe)  # host memory: what a CPU run holds
    if problems:
        raise RecipeError(problems, source=source)


# ------------------------------------------------------------------------------------------------- memory
def available_memory() -> tuple[int, str] | None:
    """The memory a run may use now and where the number comes from: ``SLIMKIT_MEMORY_LIMIT`` (bytes), else
    ``MemAvailable`` of /proc/meminfo, else the machine's physical memory; None where none is known."""
    raw = os.environ.get(MEMORY_LIMIT_ENV)
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise RecipeError([("", f"{MEMORY_LIMIT_ENV}={raw!r} is not a number of bytes.")]) from None
        return limit, MEMORY_LIMIT_ENV
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    from slimkit.models.build import memory_bytes

    total = memory_bytes()
    return (total, "physical memory") if total is not None else None


def _mb(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _stage_copies(stage: Any) -> tuple[int, str, bool]:
    """Extra model-sized copies a stage holds, why, and whether it trains."""
    ft = stage if getattr(stage, "epochs", None) is not None else getattr(stage, "finetune", None)
    if ft is not None and int(getattr(ft, "epochs", 0) or 0) > 0:
        opt = str(getattr(ft, "optimizer", "adamw"))
        return (2, "gradients and SGD momentum", True) if opt == "sgd" else (3, f"gradients and 2 {opt} moments", True)
    if getattr(stage, "mixed", None) is not None:
        return 2, "2 quantized copies scored by mixed precision", False
    return 0, "", False


def _model_bytes(recipe: Recipe, facts: DataFacts) -> tuple[int | None, int, int, int | None]:
    """Weight bytes (None: unknown), the activation bytes per sample (largest and total) and the number of
    parameters (None: unknown)."""
    m = recipe.model
    if m.arch is not None and facts.get("input_shape") is not None:
        from slimkit.models.build import arch_footprint

        fp = arch_footprint(m.arch, dict(m.kwargs), facts["input_shape"], facts.get("classes") or 10)
        if fp is not None:
            return fp.weights, fp.largest, fp.total, fp.params
    files: list[Path] = []
    if m.weights is not None and Path(m.weights).is_file():
        files = [Path(m.weights)]
    elif m.hf is not None and Path(m.hf).is_dir():
        files = [p for p in Path(m.hf).iterdir() if p.suffix in (".safetensors", ".bin")]
    return (sum(p.stat().st_size for p in files) or None), 0, 0, None


def memory_problems(recipe: Recipe, available: tuple[int, str] | None = None) -> list[tuple[str, str]]:
    """A problem when the run's lower-bound memory need (module docstring) exceeds ``available`` (default
    :func:`available_memory`); nothing when the need or the memory is unknown."""
    available = available if available is not None else available_memory()
    facts = data_facts(recipe.data)
    weights, largest, total, params = _model_bytes(recipe, facts)
    if available is None or weights is None:
        return []
    limit, source = available
    stages = [_stage_copies(s) for s in recipe.stages]
    extra, why, _ = max(stages, default=(0, "", False))
    trains = any(t for _, _, t in stages)
    if recipe.model.train is not None:
        trains, extra, why = True, max(extra, 3), why or "gradients and 2 optimizer moments"
    copies = 3 + extra
    shape = facts.get("input_shape")
    per_sample = (math.prod(shape) * 4 if shape else 0) + (total if trains else largest)
    batch = recipe.data.batch_size
    need = weights * copies + batch * per_sample
    if need <= limit:
        return []
    counted = f" ({params:,} parameters)" if params is not None else ""
    parts = [f"the model's weights{counted} {_mb(weights)} x {copies} copies (baseline, reference, working model"
             + (f", {why}" if why else "") + f") = {_mb(weights * copies)}"]
    if per_sample:
        parts.append(f"one batch of {batch} inputs and the activations "
                     + ("a training stage keeps" if trains else "of its largest layer") + f": {_mb(batch * per_sample)}")
    fits = (limit - weights * copies) // per_sample if per_sample else 0
    fix = (f"Use data.batch_size {fits} or less" + (" (or fewer training stages)" if trains else "")
           if fits >= 1 else "The model's copies alone do not fit: use a smaller model, or a machine with more memory")
    return [("data.batch_size" if fits >= 1 else "model",
             f"this run needs at least {_mb(need)} of memory ({'; '.join(parts)}), but {_mb(limit)} is available "
             f"({source}). {fix}.")]
