"""Base classes for every config: frozen, extra keys forbidden, and one error type for problems."""

from __future__ import annotations

import logging
import types
import typing
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from slimkit.errors import ConfigError, RecipeError, did_you_mean

log = logging.getLogger(__name__)


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys, and ``true``/``false`` where a number is meant
    (pydantic alone would read ``lr: true`` as 1.0)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _wants_number(field.annotation):
                raise ValueError("must be a number, not a boolean")
        return value


def _wants_number(annotation: Any) -> bool:
    """Whether ``annotation`` takes an int or a float directly but not a bool (``float``, ``int | None``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _wants_number(typing.get_args(annotation)[0])
    inner = typing.get_args(annotation) if origin in (Union, types.UnionType) else (annotation,)
    return bool not in inner and any(i in (int, float) for i in inner)


class PassConfig(StrictModel):
    """Base of every pass config. ``kind`` is the stage key in a recipe (``prune``, ``quantize``,
    ``lowrank``, ``distill``, ``finetune``); ``method`` tells the configs of one kind apart."""

    kind: ClassVar[str] = ""
    handler_module: ClassVar[str] = ""
    """The module whose import registers this config's handler (``slimkit.registry.register_pass``); the
    registry imports it on first use. Empty for a config registered by code the caller imports itself."""
    flag_notes: ClassVar[dict[str, str]] = {}
    """Why a shorthand flag (see :meth:`shorthand`) does not apply to this method, by flag name."""
    renamed: ClassVar[dict[str, str]] = {}
    """Deprecated field names still accepted, old -> new (``{"exclude": "skip"}``); a warning is logged."""
    method: str

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        old = [k for k in cls.renamed if isinstance(data, dict) and k in data]
        if not old:
            return data
        data = dict(data)
        for key in old:
            new = cls.renamed[key]
            if new in data:
                raise ValueError(f"give '{new}' only: '{key}' is its deprecated name")
            log.warning("%s: '%s' is deprecated; write '%s' (same meaning)", cls.__name__, key, new)
            data[new] = data.pop(key)
        return data

    def stage_dict(self) -> dict[str, Any]:
        """The recipe form of this config: ``{kind: {method: ..., field: value, ...}}``."""
        return {self.kind: self.model_dump(mode="json")}

    @classmethod
    def shorthand(cls, **flags: Any) -> dict[str, Any]:
        """The recipe body ``{"method": ..., ...}`` for shorthand settings such as the CLI's ``--bits`` and
        ``--group-size``: each flag that is not None sets the field of the same name. Configs whose fields
        are shaped differently override this. A flag without such a field raises ConfigError (validation of
        the values is left to the recipe parser, which reports them with their recipe path)."""
        method = cls.model_fields["method"].default
        body: dict[str, Any] = {"method": method}
        for name, value in flags.items():
            if value is None:
                continue
            if name not in cls.model_fields:
                reason = cls.flag_notes.get(name, f"{cls.__name__} has no {name} setting")
                raise ConfigError(f"--{name.replace('_', '-')} {value} does not apply to --method {method}: {reason}.")
            body[name] = value
        return body


def _unwrap(annotation: Any) -> list[Any]:
    """Inner types of Optional/Union/list/tuple/dict annotations, for walking error paths."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    if origin in (list, tuple, set, frozenset):
        return [a for arg in typing.get_args(annotation) for a in _unwrap(arg) if a is not Ellipsis]
    if origin is dict:
        args = typing.get_args(annotation)
        return _unwrap(args[1]) if len(args) == 2 else []
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return [annotation]


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of ``loc``."""
    current: type[BaseModel] | None = cls
    for part in loc[:-1]:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        nxt = None
        for inner in _unwrap(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                nxt = inner
                break
        current = nxt
    return current


def format_loc(loc: tuple[Any, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower_first(msg: str) -> str:
    replacements = {
        "Input should be greater than or equal to": "must be >=",
        "Input should be greater than": "must be >",
        "Input should be less than or equal to": "must be <=",
        "Input should be less than": "must be <",
        "Input should be": "must be",
        "Value error, ": "",
    }
    for old, new in replacements.items():
        if msg.startswith(old):
            return new + msg[len(old):]
    return msg[:1].lower() + msg[1:]


def validation_problems(
    exc: ValidationError, cls: type[BaseModel], prefix: str = ""
) -> list[tuple[str, str]]:
    """Turn a pydantic ValidationError into ``(path, message)`` pairs a person can act on."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # pydantic adds the tag of a union member to the loc; drop names that are not fields
        path = format_loc(loc, prefix)
        etype = err["type"]
        if etype == "extra_forbidden":
            owner = _model_at(cls, loc)
            key = str(loc[-1]) if loc else "?"
            hint = did_you_mean(key, owner.model_fields) if owner is not None else ""
            allowed = ", ".join(sorted(owner.model_fields)) if owner is not None else ""
            msg = f"unknown key '{key}'.{hint}"
            if not hint and allowed:
                msg += f" Allowed keys: {allowed}."
            problems.append((path, msg))
        elif etype == "missing":
            problems.append((path, "required key is missing"))
        else:
            msg = _lower_first(err["msg"])
            if "input" in err and etype not in ("model_type", "dict_type"):
                msg += f", got {_short(err['input'])}"
            problems.append((path, msg))
    return problems


def build(cls: type[StrictModel], data: Any, *, prefix: str = "") -> Any:
    """Validate ``data`` into ``cls``; raise :class:`RecipeError` listing every problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc, cls, prefix)) from None
