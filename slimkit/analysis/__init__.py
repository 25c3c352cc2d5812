"""Read-only measurements that passes, search and auto share: per-layer sensitivity and mixed assignment,
and streaming calibration input statistics (:mod:`slimkit.analysis.calibration`).

This package sits below ``slimkit.passes`` and ``slimkit.search`` (see docs/architecture.md): it imports only
``slimkit.errors``, ``slimkit.config``, ``slimkit.context`` and ``slimkit.data.batch``, and never changes a model.
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
