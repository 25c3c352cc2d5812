"""Read-only measurements that passes, search and auto share: per-layer sensitivity and mixed assignment,
streamed calibration statistics (``slimkit.analysis.calibration``).

This package sits below ``slimkit.passes`` and ``slimkit.search`` (see docs/architecture.md): it imports only
``slimkit.errors`` and ``slimkit.config`` and never changes a model.
"""

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
