"""Issue 14 item 6 (before it starts): a run whose model, data and passes cannot fit in the available memory
is refused by the fit check (``slimkit validate`` and the start of ``slimkit run``) with the sizes and the
largest batch that fits, before any data is loaded. The limit is injected (``SLIMKIT_MEMORY_LIMIT``) rather
than exhausting the machine."""

from __future__ import annotations

import re

import pytest
import yaml
from test_reliability import cli, user_error

from slimkit.config.recipe import parse_recipe
from slimkit.errors import RecipeError
from slimkit.models.build import arch_footprint
from slimkit.pipeline.fit import MEMORY_LIMIT_ENV, available_memory, check_fit, memory_problems

TRAINING = {"name": "mem", "model": {"arch": "cnn-small"}, "data": {"name": "digits", "batch_size": 512},
            "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 1}}}],
            "evaluate": {"latency": None}}


def test_the_estimate_is_the_measured_footprint_times_the_copies():
    r = parse_recipe(TRAINING)
    fp = arch_footprint("cnn-small", {}, (1, 8, 8), 10)
    assert fp is not None and fp.weights > 0 and fp.total >= fp.largest > 0
    # 3 copies (baseline, reference, working model) + gradients and 2 AdamW moments of the training stage
    need = 6 * fp.weights + 512 * (8 * 8 * 4 + fp.total)
    assert memory_problems(r, (need, "test")) == []
    (path, msg), = memory_problems(r, (need - 1, "test"))
    assert path == "data.batch_size" and "x 6 copies" in msg and "(test)" in msg
    fits = int(re.search(r"batch_size (\d+) or less", msg).group(1))
    assert fits == (need - 1 - 6 * fp.weights) // (8 * 8 * 4 + fp.total) == 511
    smaller = parse_recipe({**TRAINING, "data": {**TRAINING["data"], "batch_size": fits}})
    assert memory_problems(smaller, (need - 1, "test")) == []
    # without training the activations of the largest layer count, not all of them; no copies for gradients
    infer = parse_recipe({**TRAINING, "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]})
    assert memory_problems(infer, (3 * fp.weights + 512 * (8 * 8 * 4 + fp.largest), "test")) == []
    (path, msg), = memory_problems(infer, (2 * fp.weights, "test"))
    assert path == "model" and "smaller model" in msg


def test_a_run_that_does_not_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(TRAINING))
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(3 * 2**20))
    assert available_memory() == (3 * 2**20, MEMORY_LIMIT_ENV)
    with pytest.raises(RecipeError, match="needs at least"):
        check_fit(parse_recipe(TRAINING))
    for cmd in (("validate", str(p)), ("run", str(p), "--out", str(tmp_path / "o"))):
        code, text = cli(*cmd)
        user_error(code, text, "needs at least", "3.0 MiB is available", "SLIMKIT_MEMORY_LIMIT", "batch_size")
    assert not (tmp_path / "o" / "state.json").exists()  # nothing ran: no data loaded, no baseline
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    code, text = cli("validate", str(p))
    user_error(code, text, "not a number of bytes")
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    limit, source = available_memory()
    assert limit > 0 and source == "MemAvailable"
