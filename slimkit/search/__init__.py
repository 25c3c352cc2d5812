"""Search over recipe settings (`slimkit.search(config, out=...)`); re-exports per-layer sensitivity from
slimkit.analysis for existing callers."""

from slimkit.analysis.sensitivity import (
    MixedAssignment,
    UnitSensitivity,
    layer_sensitivity,
    mixed_assignment,
    one_at_a_time,
    sensitivity_plot,
    sensitivity_table,
)

__all__ = ["MixedAssignment", "UnitSensitivity", "layer_sensitivity", "mixed_assignment", "one_at_a_time",
           "sensitivity_plot", "sensitivity_table"]

# --- constraint search (slimkit/search/runner.py): `slimkit.search(config, out=...)`; Optuna/Ray load on use
from slimkit.search.runner import make_callable as _make_callable  # noqa: E402
from slimkit.search.runner import search  # noqa: E402, F401

_make_callable(__name__)
