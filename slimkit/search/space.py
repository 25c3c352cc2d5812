"""Deprecated location: the search space lives in :mod:`slimkit.config.search_space` (validated with the
search config, below the search package). This module only re-exports it so existing imports keep working."""

from slimkit.config.search_space import *  # noqa: F403
from slimkit.config.search_space import __all__  # noqa: F401
