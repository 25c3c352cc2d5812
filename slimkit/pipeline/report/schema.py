"""The shape of a run's report.json (``../shared/schemas/report.schema.json``), checked when a report is
read back (``slimkit report``, ``slimkit compare``): a file that is not a report as the schema defines it
(truncated, edited, bit-flipped) is refused with a ReportError naming the first problems, never rendered or
compared as if it were valid. Keys the schema does not name are kept as they are, except those the renderers
read, whose shape is checked too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimkit.errors import ReportError

__all__ = ["check_report"]

_Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0)]
_Number = Annotated[float, Field(allow_inf_nan=False)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Latency(_Loose):
    median: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    p90: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    batch: Annotated[int, Field(ge=1)] | None = None
    runtime: str | None = None


class _Metrics(_Loose):
    accuracy: _Fraction | None
    f1: _Fraction | None = None
    fidelity: dict[str, _Number | None] | None = None
    params: _Count | None
    nonzero_params: _Count | None
    macs: _Count | None
    size_bytes: _Count | None
    artifact: str | None
    sparsity: _Fraction | None
    latency_ms: _Latency | None
    throughput: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class _Stage(_Loose):
    index: _Count
    pass_: str = Field(alias="pass")
    config: dict[str, Any]
    metrics: _Metrics
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Constraint(_Loose):
    name: str
    limit: _Number | None
    value: _Number | None
    met: bool | None


class _Delivered(_Loose):
    stage: _Count | None
    pass_: str = Field(alias="pass")
    reason: str


class _Parity(_Loose):
    max_abs_diff: _Number | None = None
    round_trip_exact: bool | None = None


class _Stopped(_Loose):
    index: _Count
    pass_: str = Field(alias="pass")
    reason: str


class _Export(_Loose):
    format: str
    artifact: str | None = None
    size_bytes: _Count | None = None
    parity: _Parity | None = None


class _Report(_Loose):
    name: str
    recipe: dict[str, Any]
    baseline: _Metrics
    stages: list[_Stage]
    final: _Metrics
    constraints: list[_Constraint]
    verdict: Annotated[str, Field(min_length=1)]
    delivered: _Delivered | None = None
    stopped: _Stopped | None = None
    exports: list[_Export] | None = None
    environment: dict[str, Any] | None = None


def check_report(data: Any, path: Path) -> dict[str, Any]:
    """``data`` (read from ``path``) when it is a report as the schema defines it, else ReportError."""
    try:
        _Report.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}"
                             for e in exc.errors()[:3])
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise ReportError(f"{path} is not a slimkit run report: {problems[:600]}{more}.",
                          hint="It was edited or damaged; run the recipe again (with --resume it reuses the "
                               "finished stages) to rewrite it.") from None
    return data
