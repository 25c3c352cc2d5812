"""Experiment tracking settings: a recipe's ``tracking:`` block and the CLI's ``--track mlflow[:URI]``.

```yaml
tracking:
  backend: mlflow                 # the one backend
  uri: http://mlflow.internal:5000  # default: a local store inside the run directory (mlflow.db + mlartifacts/)
  experiment: slimkit             # the MLflow experiment the run goes to
  max_model_mb: 100               # the exported model is logged when it is at most this large
```
Off unless asked. Tracking never changes a result: it is not part of the recipe hash that ``--resume`` checks.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from slimkit.config.base import StrictModel, build
from slimkit.errors import RecipeError

# URI schemes MLflow's tracking client accepts (a plain path is a local file store)
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(StrictModel):
    """Where a run, a search or an auto run is logged (MLflow): parameters, per-stage metrics, report, artifacts."""

    backend: Literal["mlflow"] = "mlflow"
    uri: str | None = Field(None, min_length=1, max_length=2048,
                            description="tracking URI (http(s)://, sqlite:///, file:///, databricks, ...); "
                                        "None: a local store in the run directory (mlflow.db, mlartifacts/)")
    experiment: str = Field("slimkit", min_length=1, max_length=256, description="MLflow experiment name")
    max_model_mb: float = Field(100.0, ge=0, le=100_000,
                                description="log the exported model files when together they are at most this "
                                            "many MB (0: never)")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", v)
        scheme = m.group(1).split("+")[0].lower() if m else None
        if scheme is not None and len(scheme) > 1 and scheme not in TRACKING_SCHEMES:
            raise ValueError(f"unknown tracking URI scheme {scheme!r}; expected one of {', '.join(TRACKING_SCHEMES)} "
                             "or a local path")
        return v


def parse_track(spec: str) -> TrackingConfig:
    """The CLI's ``--track`` value: ``mlflow`` (a local store in the run directory) or ``mlflow:URI``."""
    backend, sep, uri = spec.partition(":")
    if backend != "mlflow":
        raise RecipeError([("--track", f"expected 'mlflow' or 'mlflow:URI', got {spec!r}")])
    if sep and not uri:
        raise RecipeError([("--track", "'mlflow:' needs a URI after the colon (or give just 'mlflow')")])
    return build(TrackingConfig, {"uri": uri or None}, prefix="--track")


__all__ = ["TRACKING_SCHEMES", "TrackingConfig", "parse_track"]
