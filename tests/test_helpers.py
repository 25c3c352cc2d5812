"""The one-per-job helpers of docs/architecture.md: paired latency order and summary, output agreement, eval
mode restore, YAML errors, figures as PNG, CPU flags."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
from torch import nn

from slimkit._io import read_yaml
from slimkit.analysis.figures import figure, png_bytes
from slimkit.context import eval_mode
from slimkit.errors import ConfigError, DataError, RecipeError
from slimkit.evaluation.agreement import argmax_agreement, row_cosine
from slimkit.evaluation.latency import (
    cpu_flags,
    cpu_has_vnni,
    interleaved_times,
    ort_compare,
    paired_latency,
    paired_ratios,
)


def test_paired_latency_alternates_and_takes_the_median_round() -> None:
    calls: list[str] = []
    a_ms, b_ms = iter([3.0, 1.0, 2.0]), iter([10.0, 30.0, 20.0])

    def a() -> dict:
        calls.append("a")
        return {"median": next(a_ms), "p90": 0.0, "batch": 1}

    def b() -> dict:
        calls.append("b")
        return {"median": next(b_ms), "p90": 0.0, "batch": 1}

    ra, rb = paired_latency(a, b, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert ra["median"] == 2.0 and rb["median"] == 20.0
    a_ms, b_ms = iter([3.0, 1.0]), iter([10.0, 30.0])
    ra, rb = paired_latency(a, b, rounds=2)  # A B B A: the mean of the two
    assert ra["median"] == 2.0 and rb["median"] == 20.0
    with pytest.raises(ValueError):
        paired_latency(a, b, rounds=0)


def test_ort_compare_alternates_calls_one_by_one(monkeypatch) -> None:
    """Each file: one session, warmed up, then its calls alternate with the other files' (each timed call right
    after one refill call of the same file, so it runs on warm caches), the order reversed every other time;
    per-round medians, p90 of all calls, CPU time and the cold (first) call recorded (no timing)."""
    import types

    import slimkit.evaluation.latency as latency
    from slimkit.config.recipe import LatencyConfig

    calls: list[str] = []
    opened: list[tuple] = []

    class Session:
        def __init__(self, path, threads, spinning=True):
            self.name = str(path)
            opened.append((self.name, threads, spinning))

        def get_inputs(self):
            return [types.SimpleNamespace(name="x", type="tensor(float)")]

        def run(self, _, feed):
            assert feed["x"].shape == (4, 3)
            calls.append(self.name)

    monkeypatch.setattr(latency, "ort_session", Session)
    cfg = LatencyConfig(batch=4, warmup=1, repeats=2, threads=1, runtime="onnxruntime")
    got = ort_compare({"a": "A", "b": "B"}, (torch.zeros(1, 3),), cfg, rounds=3)
    assert opened == [("A", 1, False), ("B", 1, False)]
    assert "".join(calls) == "AB" + "AABBBBAA" * 3  # warm-up, then (refill, timed) A, B; B, A; ... over the rounds
    for r in got.values():
        assert len(r["rounds"]) == 3 and r["batch"] == 4 and r["runtime"] == "onnxruntime"
        assert r["median"] == sorted(r["rounds"])[1] and r["cpu_median"] >= 0 and r["p90"] >= min(r["rounds"])
        assert r["cold_median"] >= 0
    calls.clear()
    got = ort_compare({"a": "A", "b": "B"}, (torch.zeros(1, 3),), cfg, rounds=1, refill=0)
    assert "".join(calls) == "AB" + "ABBA" and "cold_median" not in got["a"]  # one by one, as before
    with pytest.raises(Exception, match="rounds"):
        ort_compare({"a": "A"}, (torch.zeros(1, 3),), cfg, rounds=0)


def test_interleaved_times_order_counts_and_cpu_time() -> None:
    """Warm-up per name, then every step calls each name once: alternating A B C, C B A, ... or shuffled by a
    seed (the same seed, the same order); per-call wall and CPU lists aligned by step; CPU time is CPU time (a
    sleeping call's is far below its wall time, a spinning call's is not); torch threads restored."""
    calls: list[str] = []

    def fake(name: str):
        return lambda: calls.append(name)

    fns = {"a": fake("a"), "b": fake("b"), "c": fake("c")}
    got = interleaved_times(fns, rounds=2, repeats=2, warmup=1)
    assert "".join(calls) == "abc" + "abccba" * 2
    for r in got.values():
        assert len(r["rounds"]) == 2 and len(r["calls"]) == len(r["cpu_calls"]) == 4
        assert r["median"] == statistics.median(r["rounds"]) and r["p90"] <= max(r["calls"])
        assert r["cpu_clock"] == "process_time" and r["cpu_median"] >= 0

    def shuffled(seed: int) -> list[str]:
        calls.clear()
        interleaved_times(fns, rounds=3, repeats=2, warmup=0, order="shuffle", seed=seed)
        steps = [calls[i:i + 3] for i in range(0, 18, 3)]
        assert all(sorted(s) == ["a", "b", "c"] for s in steps)  # each step calls every name once
        return calls.copy()

    assert shuffled(1) == shuffled(1) and len({"".join(shuffled(s)) for s in range(8)}) > 1

    threads = torch.get_num_threads()

    def spin() -> None:
        end = time.thread_time() + 0.003
        while time.thread_time() < end:
            pass

    got = interleaved_times({"sleep": lambda: time.sleep(0.003), "spin": spin}, rounds=2, repeats=2, threads=1)
    assert torch.get_num_threads() == threads
    assert got["sleep"]["cpu_clock"] == "thread_time" and got["spin"]["cpu_median"] >= 2.9
    assert got["sleep"]["median"] >= 2.9 and got["sleep"]["cpu_median"] < 1.5
    with pytest.raises(ConfigError, match="rounds"):
        interleaved_times(fns, rounds=0)
    with pytest.raises(ConfigError, match="refill"):
        interleaved_times(fns, rounds=1, refill=-1)
    with pytest.raises(ConfigError, match="order"):
        interleaved_times(fns, rounds=1, order="random")


def test_interleaved_times_refill_runs_each_timed_call_warm() -> None:
    """``refill`` untimed calls of a name come right before its timed call in the same step; only the timed
    calls count in the medians and lists, the first refill call of each step is the cold one."""
    calls: list[str] = []
    cost = {"a": 0.0, "b": 0.0}

    def fake(name: str):
        def call() -> None:
            # the first call after another name ran is slow (cold caches), the next one fast
            slow = not calls or calls[-1] != name
            calls.append(name)
            time.sleep(0.004 if slow else 0.0)
            cost[name] += 1
        return call

    got = interleaved_times({"a": fake("a"), "b": fake("b")}, rounds=2, repeats=2, warmup=0, refill=2)
    assert "".join(calls) == "aaabbb" "bbbaaa" "aaabbb" "bbbaaa"
    for r in got.values():
        assert len(r["calls"]) == 4 and r["median"] < 2.0 and r["cold_median"] >= 3.9


def test_paired_ratios_median_and_quartiles() -> None:
    r = paired_ratios([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 1.0, 1.0, 1.0, 2.0])
    np.testing.assert_allclose([r["q1"], r["median"], r["q3"]],
                               np.quantile([2.0, 4.0, 6.0, 8.0, 5.0], [0.25, 0.5, 0.75]))
    assert paired_ratios([1.0], [0.0])["median"] == float("inf")
    with pytest.raises(ConfigError, match="equally long"):
        paired_ratios([1.0, 2.0], [1.0])


def test_agreement() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(row_cosine(a, b), [1.0, 2 ** -0.5, 1.0])  # two zero rows are identical
    assert argmax_agreement(a, b) == pytest.approx(2 / 3)  # row 2: argmax 1 vs 0 (first of the tie)
    assert row_cosine(np.ones((2, 3, 4)), np.ones((2, 3, 4))).shape == (2,)
    with pytest.raises(DataError):
        row_cosine(a, b[:2])


def test_eval_mode_restores_each_flag_even_on_error() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    m.train()
    m[2].eval()
    with pytest.raises(RuntimeError), eval_mode(m):
        assert not any(x.training for x in m.modules())
        raise RuntimeError("boom")
    assert [x.training for x in m.modules()] == [True, True, True, False]


def test_read_yaml_names_the_problem(tmp_path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        read_yaml(tmp_path / "none.yaml", what="recipe file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(RecipeError, match="not valid YAML \\(line"):
        read_yaml(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: 1\n")
    assert read_yaml(ok) == {"a": 1}


def test_figure_png() -> None:
    with figure((2, 2), dpi=50) as (fig, ax):
        ax.plot([0, 1], [1, 0])
        data = png_bytes(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100


def test_cpu_flags_and_vnni_agree() -> None:
    flags = cpu_flags()
    vnni = cpu_has_vnni()
    assert (flags is None) == (vnni is None)
    if flags is not None:
        assert vnni == bool({"avx512_vnni", "avx_vnni"} & flags)
