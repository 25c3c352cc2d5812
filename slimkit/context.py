"""What a pass may need besides the model and its config."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn


@dataclass
class PassContext:
    """Inputs a pass may use. Verbs build one from keyword arguments; the runner builds one from the recipe.

    example_inputs: a tuple of tensors the model accepts (for tracing, MACs and export).
    calibration: an iterable of batches for observers and importance (``x``, ``(x, y)`` or a Hugging Face
        dict; the one convention is :mod:`slimkit.data.batch`).
    train_loader / val_loader: labelled batches (``(x, y)`` or a dict with ``labels``) for fine-tuning and
        distillation.
    teacher: the model before compression (the runner sets it), used by distillation.
    records / extras: what the passes report about what they did (typed :class:`PassRecord` objects).
    """

    example_inputs: tuple[torch.Tensor, ...] | None = None
    calibration: Iterable[Any] | None = None
    train_loader: Iterable[Any] | None = None
    val_loader: Iterable[Any] | None = None
    teacher: nn.Module | None = None
    num_classes: int | None = None
    seed: int = 0
    workdir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """What the passes recorded, by record key (``ctx.extras["structured"].trace``); see :meth:`add`."""
    records: list[PassRecord] = field(default_factory=list)
    """The typed records the passes added, in order (the runner stores them in the stage record)."""

    def add(self, record: R) -> R:
        """Keep ``record`` (a :class:`PassRecord`): appended to ``records`` and readable as ``extras[record.key]``;
        a record with the same key replaces the earlier one."""
        self.records = [r for r in self.records if r.key != record.key] + [record]
        self.extras[record.key] = record
        return record

    def require(self, *names: str, pass_name: str = "this pass") -> None:
        from slimkit.errors import ConfigError

        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{pass_name} needs {', '.join(missing)} but none was given.",
                hint="Pass it as a keyword argument (e.g. calibration=loader) or give the recipe a data section.",
            )


R = TypeVar("R", bound="PassRecord")


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...] | None:
    """Example inputs as a tuple of tensors: a tensor becomes a 1-tuple, None stays None."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


@dataclass
class PassRecord:
    """Base of the typed record a pass keeps about what it did (``ctx.add(MyRecord(...))``).

    The runner stores every record of a stage whole in the stage's report entry under ``key``
    (:meth:`to_json`) and adds its :meth:`notes` to the report's verdict, so the runner needs to know nothing
    about any pass. Fields read as attributes or, as the dicts they replace did, by name (``record["trace"]``).
    """

    key: ClassVar[str] = "record"

    def notes(self, stage: int) -> list[str]:
        """Plain-words sentences for the report (``stage`` is the stage index); none by default."""
        return []

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (nested records and dataclasses as objects; modules and tensors left out)."""
        return _jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def __getitem__(self, name: str) -> Any:
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default


_SKIP = object()


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data; ``_SKIP`` for what has no JSON form (modules, tensors), which containers drop."""
    if isinstance(value, PassRecord):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        pairs = ((str(k), _jsonable(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not _SKIP}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [v for v in map(_jsonable, items) if v is not _SKIP]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (nn.Module, torch.Tensor, torch.dtype)):
        return _SKIP if not isinstance(value, torch.dtype) else str(value).removeprefix("torch.")
    return str(value)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """A recipe's ``device`` as a torch device: ``auto`` is CUDA when ``torch.cuda.is_available()``, else CPU;
    ``cpu``; ``cuda`` (or ``cuda:N``), which raises :class:`slimkit.errors.DeviceError` naming the fix when
    this machine has no such CUDA device."""
    from slimkit.errors import DeviceError

    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {text!r}; expected auto, cpu or cuda.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device {text!r} is not supported; expected auto, cpu or cuda.")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceError(f"{text} was asked for, but this machine has no CUDA device (torch "
                          f"{torch.__version__}, {build}).",
                          hint="Use device: auto or cpu (--device auto|cpu), or run on a machine with an NVIDIA GPU "
                               "and a CUDA build of torch.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{text} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s).", hint="Use device: cuda (the first GPU) or a smaller index.")
    return device


def model_device(model: Any) -> torch.device:
    """The device of a module's first parameter or buffer; CPU for a module without any and for any other
    callable (an ONNX session wrapper, a function)."""
    if not isinstance(model, nn.Module):
        return torch.device("cpu")
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each module's own training flag after (also when
    the block raises). Anything that is not an ``nn.Module`` passes through."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
