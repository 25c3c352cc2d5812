"""Search over recipe settings (`slimkit.search(config, out=...)`); re-exports per-layer sensitivity from
slimkit.analysis for existing callers."""

from slimkit.analysis import *  # noqa: F403  (layer_sensitivity, mixed_assignment, ... as before)
from slimkit.analysis import __all__  # noqa: F401

# --- constraint search (slimkit/search/runner.py): `slimkit.search(config, out=...)`; Optuna/Ray load on use
from slimkit.search.runner import make_callable as _make_callable  # noqa: E402
from slimkit.search.runner import search  # noqa: E402, F401

_make_callable(__name__)
