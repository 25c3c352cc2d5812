"""The recipe: model, data, stages, evaluation, constraints and export, validated before any compute."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit._io import MAX_YAML_DEPTH, read_yaml
from slimkit.config.auto import AutoConfig
from slimkit.config.base import PassConfig, StrictModel, build, format_loc, validation_problems
from slimkit.config.tracking import TrackingConfig
from slimkit.errors import RecipeError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d{1,2})?)$"
"""A recipe's ``device``: auto, cpu, cuda or cuda:N (resolved by :func:`slimkit.context.resolve_device`)."""
MAX_SEED = 2**32 - 1
"""Seeds go to torch, numpy and Python generators; numpy takes at most 32 bits."""


class TrainBaselineConfig(StrictModel):
    """Train a baseline when the recipe gives no weights (quick, deterministic)."""

    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    batch_size: int | None = Field(None, ge=1, le=65536)


class ModelConfig(StrictModel):
    """Exactly one source: a built-in ``arch``, a Python ``entry_point`` (``pkg.mod:factory``), or ``hf``."""

    arch: str | None = None
    entry_point: str | None = None
    hf: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    train: TrainBaselineConfig | None = None
    sentence_encoder: bool = Field(False, description="hf only: mean-pool (and normalise as the model folder says) "
                                                      "into sentence embeddings (slimkit.models.sentence)")

    @field_validator("entry_point")
    @classmethod
    def _entry_point_form(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError("entry_point must look like 'package.module:factory'")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in ("arch", "entry_point", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of arch, entry_point, hf (got {given or 'none'})")
        if self.sentence_encoder and not self.hf:
            raise ValueError("sentence_encoder applies to hf models only")
        return self


class DataConfig(StrictModel):
    """``digits``/``fashion-mnist``/``image-folder``/``tensors`` are labelled; ``sample-images`` (ImageNet-style
    photo crops) and ``sentences`` (offline English sentences, tokenized with ``tokenizer``; with ``path``, the
    user's own texts, one per line or ``.jsonl`` with a ``"text"`` field) are unlabelled inputs: a run on them
    measures fidelity to the baseline model instead of accuracy."""

    name: Literal["digits", "fashion-mnist", "image-folder", "tensors", "sample-images", "sentences"] = "digits"
    path: Path | None = None
    batch_size: int = Field(64, ge=1, le=65536)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)
    calibration_samples: int = Field(256, ge=1, le=1_000_000)
    limit: int | None = Field(None, ge=10, description="use at most this many training samples (small runs)")
    test_limit: int | None = Field(None, ge=1, description="evaluate on at most this many test samples (small runs)")
    image_size: int | None = Field(None, ge=4, le=4096)
    channels: Literal[1, 3] | None = Field(None, description="fashion-mnist: 3 copies the grey channel (ImageNet models)")
    normalize: Literal["dataset", "imagenet"] = Field(
        "dataset", description="fashion-mnist: the dataset's mean/std, or ImageNet's (pretrained ImageNet models)")
    tokenizer: str | None = Field(None, description="sentences: the Hugging Face tokenizer (default: model.hf)")
    max_length: int = Field(128, ge=8, le=4096, description="sentences: tokens per sentence at most")
    padding: Literal["longest", "max_length"] = Field(
        "longest", description="sentences: pad each batch to its longest sentence, or every batch and the example "
                               "input to max_length tokens (fixed-shape ONNX; latency measured at that length)")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.name in ("image-folder", "tensors") and self.path is None:
            raise ValueError(f"data '{self.name}' needs a path")
        if self.path is not None and self.name in ("digits", "sample-images"):
            raise ValueError(f"data.path applies to fashion-mnist, image-folder, tensors and sentences, not "
                             f"'{self.name}' (its data ships with slimkit's dependencies)")
        if self.name == "sentences" and self.tokenizer is None:
            raise ValueError("data 'sentences' needs a tokenizer (it defaults to model.hf; set data.tokenizer "
                             "for other models)")
        if self.name != "sentences" and self.padding != "longest":
            raise ValueError("data.padding applies to sentences only")
        if self.name != "fashion-mnist" and (self.channels is not None or self.normalize != "dataset"):
            raise ValueError("data.channels and data.normalize apply to fashion-mnist only")
        return self

    @property
    def labelled(self) -> bool:
        """False for input-only data (sample-images, sentences): runs measure fidelity, not accuracy."""
        return self.name not in ("sample-images", "sentences")


class LatencyConfig(StrictModel):
    batch: int = Field(1, ge=1, le=4096)
    warmup: int = Field(10, ge=0, le=10_000)
    repeats: int = Field(30, ge=1, le=100_000)
    threads: int | None = Field(None, ge=1, le=1024, description="None: all cores")
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch", description="where the run's final latency is measured: the PyTorch model, or the exported ONNX "
                             "artifact in onnxruntime against the baseline's fp32 ONNX (needs export.formats: [onnx])")


class EvaluateConfig(StrictModel):
    latency: LatencyConfig | None = Field(default_factory=LatencyConfig)
    split: Literal["test", "val"] = "test"
    fidelity: bool = False
    stop_early: bool = Field(False, description="stop after a stage that misses a quality constraint when no later "
                                                "stage trains (finetune, distill): the rest cannot win it back")


class ConstraintsConfig(StrictModel):
    """Limits the final model must meet. Accuracy is a fraction: 0.01 is one point."""

    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_size_bytes: int | None = Field(None, ge=1)
    max_size_ratio: float | None = Field(None, gt=0, description="final bytes / baseline bytes")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="mean cosine of final vs baseline outputs")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="final vs baseline argmax agreement")
    min_speedup: float | None = Field(None, gt=0, description="baseline latency / final latency")
    min_sparsity: float | None = Field(None, ge=0, le=1)


class OnnxConfig(StrictModel):
    opset: int = Field(18, ge=13, le=23)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    parity_atol: float | None = Field(None, gt=0, description="None: 1e-3 for fp32, 1e-2 for fp16 (atol and rtol)")


class ExportConfig(StrictModel):
    formats: list[Literal["safetensors", "onnx"]] = Field(default_factory=lambda: ["safetensors"])
    onnx: OnnxConfig = Field(default_factory=OnnxConfig)


class Recipe(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[Any] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    deliver: Literal["best", "last"] = Field(
        "best", description="best: the last stage that met every constraint (the last stage when none did); "
                            "last: always the last finished stage")
    auto: AutoConfig | None = Field(None, description="settings of `slimkit auto`; `slimkit run` ignores them")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="where the model is compressed, trained, evaluated and timed: auto (cuda when "
                                    "torch.cuda.is_available(), else cpu), cpu, cuda or cuda:N; export runs "
                                    "from a CPU copy")
    tracking: TrackingConfig | None = Field(None, description="log the run to MLflow (off when absent; the CLI's "
                                                              "--track mlflow[:URI] sets it)")

    @model_validator(mode="after")
    def _deployed_latency(self) -> Recipe:
        lat = self.evaluate.latency
        if lat is not None and lat.runtime == "onnxruntime" and "onnx" not in self.export.formats:
            raise ValueError("evaluate.latency.runtime: onnxruntime times the exported ONNX: add onnx to export.formats")
        return self

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_from_model(cls, data: Any) -> Any:
        """``data: {name: sentences}`` tokenizes with the recipe's own Hugging Face model by default."""
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and isinstance(data.get("model"), dict):
            d, m = data["data"], data["model"]
            if d.get("name") == "sentences" and d.get("tokenizer") is None and isinstance(m.get("hf"), str):
                data = {**data, "data": {**d, "tokenizer": m["hf"]}}
        return data

    @property
    def passes(self) -> list[PassConfig]:
        return list(self.stages)

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in, as plain data (for recipe.yaml and report.json)."""
        data = self.model_dump(mode="json", exclude={"stages"})
        for key in ("auto", "tracking"):
            if data.get(key) is None:
                data.pop(key, None)  # absent unless given: the resolved recipe of ordinary runs is unchanged
        if data.get("device") == "auto":
            data.pop("device")  # the default; the device a run used is in its report's environment
        if data["evaluate"].get("latency") and data["evaluate"]["latency"].get("runtime") == "torch":
            data["evaluate"]["latency"].pop("runtime")  # the default; keeps the hashes of existing runs
        data["stages"] = [s.stage_dict() for s in self.stages]
        return data


def parse_recipe(data: Any, *, source: str | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping. Every problem is collected and raised at once as RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError([("", f"a recipe is a mapping, got {type(data).__name__}")], source=source)
    if _too_deep(data, MAX_YAML_DEPTH):
        raise RecipeError([("", f"nested deeper than {MAX_YAML_DEPTH} levels")], source=source)
    try:
        return _parse_recipe(data, source=source, base_dir=base_dir)
    except RecursionError:
        raise RecipeError([("", f"nested too deeply (more than {MAX_YAML_DEPTH} levels)")], source=source) from None


def _too_deep(data: Any, limit: int) -> bool:
    """Whether nested dicts/lists go deeper than ``limit`` (iterative: safe on any depth)."""
    stack = [(data, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend((v, depth + 1) for v in obj)
    return False


def _parse_recipe(data: dict[str, Any], *, source: str | None, base_dir: Path | None) -> Recipe:
    from slimkit.registry import parse_stage

    problems: list[tuple[str, str]] = []
    raw_stages = data.get("stages")
    if raw_stages is None:  # `stages:` with no value; `stages: 0` or `stages: ""` is an error below
        raw_stages = []
    if not isinstance(raw_stages, list):
        problems.append(("stages", f"must be a list of stages, got {type(raw_stages).__name__}"))
        raw_stages = []
    stages: list[PassConfig] = []
    for i, stage in enumerate(raw_stages):
        cfg, probs = parse_stage(stage, i)
        problems.extend(probs)
        if cfg is not None:
            stages.append(cfg)
    top = dict(data)
    top["stages"] = []
    try:
        recipe = Recipe.model_validate(top)
    except Exception as exc:  # pydantic.ValidationError
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        problems = validation_problems(exc, Recipe) + problems
        recipe = None
    if recipe is not None and base_dir is not None:
        problems.extend(_check_paths(recipe, base_dir))
    if problems:
        raise RecipeError(problems, source=source)
    assert recipe is not None
    recipe = recipe.model_copy(update={"stages": stages})
    return _resolve_paths(recipe, base_dir) if base_dir is not None else recipe


def _check_paths(recipe: Recipe, base_dir: Path) -> list[tuple[str, str]]:
    problems = []
    if recipe.model.weights is not None and str(recipe.model.weights).startswith("pkg:"):
        # ``pkg:<package>/<file>``: resolved inside the installed package, not against base_dir
        from slimkit._io import resolve_weights
        from slimkit.errors import ModelLoadError

        try:
            resolve_weights(recipe.model.weights)
        except ModelLoadError as exc:
            problems.append(("model.weights", str(exc)))
    elif recipe.model.weights is not None:
        p = recipe.model.weights if recipe.model.weights.is_absolute() else base_dir / recipe.model.weights
        if not p.exists():
            problems.append(("model.weights", f"file not found: {p}"))
    if recipe.data.path is not None:
        p = recipe.data.path if recipe.data.path.is_absolute() else base_dir / recipe.data.path
        if not p.exists():
            problems.append(("data.path", f"not found: {p}"))
    return problems


def _resolve_paths(recipe: Recipe, base_dir: Path) -> Recipe:
    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute() or str(p).startswith("pkg:"):  # pkg: paths stay package references
            return p
        return (base_dir / p).resolve()

    model = recipe.model.model_copy(update={"weights": fix(recipe.model.weights)})
    data = recipe.data.model_copy(update={"path": fix(recipe.data.path)})
    return recipe.model_copy(update={"model": model, "data": data})


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file. Paths inside are relative to the current directory."""
    path = Path(path)
    data = read_yaml(path, what="recipe file")
    return parse_recipe(data, source=str(path), base_dir=Path.cwd())


__all__ = [
    "ConstraintsConfig", "DataConfig", "EvaluateConfig", "ExportConfig", "LatencyConfig", "ModelConfig",
    "OnnxConfig", "Recipe", "TrainBaselineConfig", "build", "format_loc", "load_recipe", "parse_recipe",
]
