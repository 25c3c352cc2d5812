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
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.config.recipe import DataConfig, Recipe
from slimkit.errors import RecipeError, SlimkitError

__all__ = ["DataFacts", "check_fit", "data_facts", "fit_problems"]

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

    try:
        resolve_device(recipe.device)
    except DeviceError as exc:
        problems.append(("device", f"{exc.message} {exc.hint}"))
    if problems:
        raise RecipeError(problems, source=source)
