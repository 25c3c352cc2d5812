"""Paired statistics (slimkit.analysis.paired) against rows built by hand from hooks on a tiny random BERT:
``target="output"`` with a residual Stream streams the moments of ``[x_cur, y_ref + r_ref - r_cur]`` over the
unpadded tokens, ``target="input"`` those of ``[x_cur, x_ref]``; neither model changes."""

from __future__ import annotations

import copy

import pytest
import torch
from models import tiny_bert, token_batches

from slimkit.analysis.paired import Stream, paired_stats
from slimkit.errors import ConfigError

pytest.importorskip("transformers")

CONSUMER, PARENT = "encoder.layer.1.attention.output.dense", "encoder.layer.1.attention.output"


def _captured(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    out: list[dict[str, torch.Tensor]] = []
    hs = [model.get_submodule(CONSUMER).register_forward_hook(lambda m, a, y: out[-1].update(x=a[0], y=y)),
          model.get_submodule(PARENT).register_forward_pre_hook(lambda m, a: out[-1].update(r=a[1]))]
    for b in batches:
        out.append({})
        with torch.no_grad():
            model(**b)
    for h in hs:
        h.remove()
    return out


def test_paired_rows_are_the_hand_built_rows() -> None:
    ref = tiny_bert().eval()
    cur = copy.deepcopy(ref)
    with torch.no_grad():
        for p in cur.encoder.layer[0].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batches = token_batches(0, n=2)
    before = {k: v.clone() for k, v in cur.state_dict().items()}
    a, b = _captured(ref, batches), _captured(cur, batches)
    for target in ("output", "input"):
        st = paired_stats(ref, cur, [CONSUMER], batches, None, {CONSUMER: Stream(PARENT, arg=1)}
                          if target == "output" else None, target=target)[CONSUMER]
        rows = []
        for r, c, batch in zip(a, b, batches, strict=True):
            other = r["y"] + r["r"] - c["r"] if target == "output" else r["x"]
            rows.append(torch.cat([c["x"], other], -1)[batch["attention_mask"].bool()].double())
        z = torch.cat(rows)
        assert st.count == z.shape[0] == int(sum(int(x["attention_mask"].sum()) for x in batches))
        assert torch.allclose(st.xtx[0], z.T @ z, rtol=1e-5, atol=1e-4)
        assert torch.allclose(st.sum[0], z.sum(0), rtol=1e-5, atol=1e-4)
        # the drift is not zero (layer 0 changed), so the target is not the reference output alone
        assert target == "input" or float((a[1]["r"] - b[1]["r"]).abs().max()) > 1e-3
    assert all(torch.equal(v, cur.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError):
        paired_stats(ref, cur, [PARENT], batches, None)
