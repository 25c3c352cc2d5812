"""Search: per-layer sensitivity and mixed-precision assignment (more strategies to come)."""

from slimkit.search.sensitivity import (
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
