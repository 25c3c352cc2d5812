"""Deprecated location: per-layer sensitivity lives in :mod:`slimkit.analysis.sensitivity` (below passes and
search). This module only re-exports it so that existing imports keep working."""

from slimkit.analysis.sensitivity import *  # noqa: F403
from slimkit.analysis.sensitivity import __all__  # noqa: F401
