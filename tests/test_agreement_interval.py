"""agreement_interval: Wilson for independent samples, a cluster bootstrap when samples come in groups."""

import numpy as np
import pytest

from slimkit.errors import DataError
from slimkit.evaluation.agreement import agreement_interval


def test_wilson_matches_the_closed_form_and_contains_the_rate() -> None:
    hits = np.array([1] * 64 + [0] * 16)  # p = 0.8, n = 80
    lo, hi = agreement_interval(hits)
    # Wilson 95% for 64/80 (z = 1.959964): 0.6995 .. 0.8730
    assert lo == pytest.approx(0.6995, abs=2e-4) and hi == pytest.approx(0.8730, abs=2e-4)
    assert agreement_interval(np.ones(10))[1] == 1.0 and agreement_interval(np.zeros(10))[0] < 1e-12


def test_groups_that_agree_together_widen_the_interval() -> None:
    # 8 photos of 40 crops each: half the photos agree on every crop, half on none
    hits = np.repeat([1, 0, 1, 0, 1, 0, 1, 0], 40)
    groups = np.repeat(np.arange(8), 40)
    w_lo, w_hi = agreement_interval(hits)
    c_lo, c_hi = agreement_interval(hits, groups)
    assert c_lo < 0.5 < c_hi and (c_hi - c_lo) > 3 * (w_hi - w_lo)
    assert agreement_interval(hits, groups) == (c_lo, c_hi)  # seeded: deterministic


def test_bad_inputs_raise_data_error() -> None:
    with pytest.raises(DataError):
        agreement_interval(np.array([]))
    with pytest.raises(DataError):
        agreement_interval(np.ones(4), np.arange(3))
