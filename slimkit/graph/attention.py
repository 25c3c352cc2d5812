"""nn.MultiheadAttention after head pruning.

torch's MultiheadAttention ties the inner width (num_heads x head_dim) to embed_dim. After whole heads are
removed the inner width is smaller than the embedding, so the pruned layer is this subclass: same class
family (``isinstance(m, nn.MultiheadAttention)`` holds), same parameter names (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), same call signature, and head_dim unchanged so kept heads compute exactly
what they computed before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention with ``num_heads * head_dim`` independent of ``embed_dim``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        nn.Module.__init__(self)
        kw = {"device": device, "dtype": dtype}
        self.embed_dim = self.kdim = self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.num_heads, self.head_dim = num_heads, head_dim
        self.inner_dim = num_heads * head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * self.inner_dim, embed_dim, **kw))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * self.inner_dim, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(self.inner_dim, embed_dim, bias=bias, **kw)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    @classmethod
    def from_pruned(cls, mod: nn.MultiheadAttention, embed_keep: torch.Tensor | None,
                    head_keep: torch.Tensor | None) -> PrunedMultiheadAttention:
        """Copy the kept embedding columns and heads of ``mod``."""
        e = mod.embed_dim
        hd = getattr(mod, "head_dim", e // mod.num_heads)
        inner = mod.num_heads * hd
        emb = torch.arange(e) if embed_keep is None else embed_keep
        heads = torch.arange(mod.num_heads) if head_keep is None else head_keep
        rows = (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
        qkv_rows = torch.cat([rows + k * inner for k in range(3)])
        w = mod.in_proj_weight
        new = cls(len(emb), len(heads), hd, mod.dropout, mod.in_proj_bias is not None, mod.batch_first,
                  device=w.device, dtype=w.dtype)
        new.training = mod.training
        with torch.no_grad():
            new.in_proj_weight.copy_(w[qkv_rows][:, emb])
            if mod.in_proj_bias is not None:
                new.in_proj_bias.copy_(mod.in_proj_bias[qkv_rows])
            new.out_proj.weight.copy_(mod.out_proj.weight[emb][:, rows])
            if mod.out_proj.bias is not None:
                new.out_proj.bias.copy_(mod.out_proj.bias[emb])
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, hd = self.num_heads, self.head_dim
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).reshape(tgt, bsz * h, hd).transpose(0, 1)
        k = F.linear(key, wk, bk).reshape(src, bsz * h, hd).transpose(0, 1)
        v = F.linear(value, wv, bv).reshape(src, bsz * h, hd).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) * (1.0 / math.sqrt(hd))
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
            scores = scores + (attn_mask.unsqueeze(0) if attn_mask.dim() == 2 else attn_mask)
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(bsz, 1, 1, src)
            if kpm.dtype == torch.bool:
                kpm = torch.zeros_like(kpm, dtype=q.dtype).masked_fill(kpm, float("-inf"))
            scores = (scores.reshape(bsz, h, tgt, src) + kpm).reshape(bsz * h, tgt, src)
        attn = scores.softmax(-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(tgt, bsz, h * hd)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.reshape(bsz, h, tgt, src)
            if average_attn_weights:
                weights = weights.mean(1)
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights
