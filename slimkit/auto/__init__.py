"""Automatic compression: from a model and constraints to a plan, a search and a deployed artifact.

    result = slimkit.auto("recipe.yaml", max_latency_ratio=0.5, max_accuracy_drop=0.01, out="runs/auto")

See docs/auto.md. Light to import; Optuna, Ray and onnxruntime load when a run starts."""

from slimkit.auto.candidates import CANDIDATES, Candidate
from slimkit.auto.run import auto

__all__ = ["CANDIDATES", "Candidate", "auto"]

from slimkit.search.runner import make_callable as _make_callable  # noqa: E402

_make_callable(__name__, auto)
