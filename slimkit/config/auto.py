"""Settings of automatic compression (``slimkit auto``, ``slimkit.auto(...)``, an ``auto:`` block in a recipe).

```yaml
auto:
  runtime: onnxruntime          # where latency is measured: onnxruntime (the exported ONNX) or torch
  max_latency_ratio: 0.5        # deployed latency / the fp32 baseline's, at most
  max_accuracy_drop: 0.01       # a fraction: 0.01 is one point (labels needed)
  min_fidelity: 0.99            # mean cosine of the outputs to the original model's, at least
  max_size_ratio: null          # deployed bytes / the baseline's, at most
  budget: 30m                   # wall clock for the search (s, m, h), or seconds
  trials: 12
  multi_objective: true         # speed, quality and bytes searched together; false: speed alone
```
Accuracy is a fraction, as everywhere in slimkit; the command line's ``--max-accuracy-drop`` takes points.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.config.base import StrictModel

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """``"30m"``, ``"90s"``, ``"1.5h"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is seconds or text like 30m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
        if not m:
            raise ValueError(f"a duration looks like 90s, 30m, 1.5h or a number of seconds, got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be > 0, got {value!r}")
    return seconds


class AutoConfig(StrictModel):
    """Constraints and budget of an automatic compression; the plan and the space are built from the model."""

    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    max_latency_ratio: float | None = Field(0.5, gt=0, le=1, description="deployed latency / baseline latency")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="a fraction (0.01 = one point)")
    min_fidelity: float | None = Field(None, gt=0, le=1, description="mean output cosine to the original model")
    max_size_ratio: float | None = Field(None, gt=0, description="deployed bytes / baseline bytes")
    budget_s: float = Field(1800.0, description="wall clock for the search; `budget: 30m` is accepted")
    trials: int = Field(12, ge=1, le=10_000)
    multi_objective: bool = Field(True, description="search speed, quality and bytes together (a Pareto front "
                                                    "searched by a multi-objective study); false: the speedup "
                                                    "alone (or the size ratio), quality as a constraint only")
    seed: int = Field(0, ge=0)
    batch: int = Field(1, ge=1, le=4096, description="latency batch size")
    latency_repeats: int = Field(20, ge=3, le=10_000)
    threads: int | None = Field(None, ge=1, le=1024, description="latency threads (None: all cores)")
    techniques: list[str] | None = Field(None, description="candidate names to consider (default: every "
                                                           "applicable one; see slimkit.auto.CANDIDATES)")
    finetune_epochs: int | None = Field(None, ge=0, le=100, description="most recovery epochs a trial may use (0: "
                                        "none; None: from the budget and the measured epoch time, see "
                                        "slimkit.auto.candidates.recovery_epochs)")
    profile_units: int = Field(24, ge=1, le=10_000, description="layers profiled (the most expensive first)")
    retime_margin: float = Field(0.25, ge=0, lt=1, description="finalists: trials meeting every other constraint "
                                                              "whose in-search speedup is at least (1 - this) of the "
                                                              "limit are timed again before they are judged")
    retime_max: int = Field(6, ge=0, le=1000, description="most finalists re-timed (the fastest in-search first)")
    retime_rounds: int = Field(5, ge=1, le=100, description="baseline/artifact rounds of a re-timing")
    backend: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int = Field(1, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _budget_words(cls, data: Any) -> Any:
        if isinstance(data, dict) and "budget" in data:
            data = dict(data)
            if "budget_s" in data:
                raise ValueError("give budget or budget_s, not both")
            data["budget_s"] = data.pop("budget")
        return data

    @field_validator("budget_s", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _sane(self) -> AutoConfig:
        if not any(v is not None for v in (self.max_latency_ratio, self.max_size_ratio)):
            raise ValueError("give max_latency_ratio or max_size_ratio: auto needs something to gain")
        if self.backend == "local" and (self.address is not None or self.workers != 1):
            raise ValueError("address and workers > 1 are for backend: ray")
        return self

    def constraints(self, labelled: bool) -> dict[str, Any]:
        """The recipe constraints these settings stand for (accuracy only with labels)."""
        out: dict[str, Any] = {}
        if self.max_latency_ratio is not None:
            out["min_speedup"] = round(1.0 / self.max_latency_ratio, 6)
        if self.max_accuracy_drop is not None and labelled:
            out["max_accuracy_drop"] = self.max_accuracy_drop
        if self.min_fidelity is not None:
            out["min_cosine"] = self.min_fidelity
        if self.max_size_ratio is not None:
            out["max_size_ratio"] = self.max_size_ratio
        return out


__all__ = ["AutoConfig", "parse_duration"]
