"""Issue 14 item 6 (short form): calibration (PTQ, min-max and the histogram observers), sensitivity (mixed precision) and evaluation stream
their statistics: a fresh process's peak RSS (``VmHWM``) with 10x more batches stays within +20%, and its growth
during the loop stays far below what keeping the extra batches would cost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

BATCH, SHAPE = 64, (3, 32, 32)
BATCH_BYTES = BATCH * 3 * 32 * 32 * 4  # 786 KiB per input batch

_SCRIPT = textwrap.dedent("""
    import copy, json, sys
    import torch
    from torch import nn
    import slimkit as sk
    from slimkit.config.quantize import Int, MixedPrecision
    from slimkit.evaluation.metrics import classification_metrics

    def config(what, n):
        if what == "sensitivity":  # mixed precision: every layer quantized alone and scored on n batches
            return sk.PTQConfig(calibration_batches=n, mixed=MixedPrecision(data="calibration", batches=n))
        return sk.PTQConfig(activations=Int(8, symmetric=False, unsigned=True, observer=what), calibration_batches=n)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    class Batches:
        # re-iterable, generated lazily: nothing but the loop itself may keep them
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(self.n):
                yield torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, 10, (BATCH_,), generator=g)

    what, n = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    # warm up every code path once, so lazily loaded libraries and allocator pools are in the baseline
    if what == "evaluate":
        classification_metrics(model, Batches(2))
    else:
        sk.quantize_(copy.deepcopy(model), config(what, 2), calibration=Batches(2))
    base = status("VmRSS")
    if what == "evaluate":
        classification_metrics(model, Batches(n))
    else:
        sk.quantize_(model, config(what, n), calibration=Batches(n))
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
""").replace("BATCH, *SHAPE", f"{BATCH}, *{SHAPE}").replace("BATCH_", str(BATCH))


def peak_rss(what: str, n: int) -> dict[str, int]:
    """Peak RSS and the RSS before the loop of a fresh process running ``what`` over ``n`` batches."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT, what, str(n)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_NOT_STREAMED = pytest.mark.xfail(strict=True, reason=(
    "mixed-precision sensitivity keeps its calibration and scoring batches in lists (passes/quantize/mixed.py "
    "plan_mixed_ptq/_score_batches) so every candidate sees the same batches: measured peak 376 MB -> 568 MB "
    "(x1.51) for 8 -> 80 batches; streaming needs a deterministic re-iterable calibration source"))


@pytest.mark.parametrize("what", ["minmax", "percentile", pytest.param("sensitivity", marks=_NOT_STREAMED), "evaluate"])
def test_peak_rss_with_10x_batches_within_20_percent(what: str) -> None:
    n = 8
    small, big = peak_rss(what, n), peak_rss(what, 10 * n)
    ratio = big["peak"] / small["peak"]
    extra = (big["peak"] - big["base"]) - (small["peak"] - small["base"])
    assert ratio <= 1.2, (what, small, big, ratio)
    # keeping the 9n extra input batches would add 9n * 786 KiB = 55 MiB; allow half of that for allocator noise
    assert extra < 0.5 * 9 * n * BATCH_BYTES, (what, small, big, extra)
