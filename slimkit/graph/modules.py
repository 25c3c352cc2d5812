"""Rules for leaf modules: what each reads and produces along its channel axes.

A rule gets the propagator, the module's qualified name, the module, the real inputs, their labels and the
real output, and returns the output's labels. Layers with weights record :class:`Member` entries so that
surgery can slice them later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit.errors import GraphError
from slimkit.graph.core import FIXED, Member
from slimkit.graph.labels import along, consume, owners, spatial, varying_dims

if TYPE_CHECKING:
    from slimkit.graph.trace import Propagator

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Softmax,
    nn.LogSoftmax, nn.Threshold,
)
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d,
)
NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}

LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, *NORM_MODULES, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
    nn.EmbeddingBag, nn.MultiheadAttention, nn.RNNBase, nn.PReLU, nn.Flatten, nn.Unflatten, nn.PixelShuffle,
    nn.PixelUnshuffle, nn.ChannelShuffle, *ELEMENTWISE_MODULES, *SPATIAL_MODULES,
)


def _chan_dim(x: torch.Tensor, batched_ndim: int) -> int:
    return 1 if x.dim() == batched_ndim else 0


def _conv(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    x, lab = args[0], labs[0]
    cdim = _chan_dim(x, mod.weight.dim())
    what = f"'{name}' ({type(mod).__name__})"
    cols = consume(P.slots, lab, cdim, what)
    outs = P.slots.new(name, "out", mod.out_channels)
    g = mod.groups
    if g > 1:  # a group's inputs and outputs live or die together; whole groups are removed
        ipg, opg = mod.in_channels // g, mod.out_channels // g
        for k in range(g):
            lead = outs[k * opg]
            P.slots.union_pairs(cols[k * ipg:(k + 1) * ipg], lead.expand(ipg))
            P.slots.union_pairs(outs[k * opg:(k + 1) * opg], lead.expand(opg))
    P.members.append(Member(name, "conv.in", cols))
    P.members.append(Member(name, "conv.out", outs, producer=True))
    return along(outs, out.shape, cdim)


def _linear(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    cols = consume(P.slots, labs[0], -1, f"'{name}' (Linear)")
    outs = P.slots.new(name, "out", mod.out_features)
    P.members.append(Member(name, "linear.in", cols))
    P.members.append(Member(name, "linear.out", outs, producer=True))
    return along(outs, out.shape, -1)


def _norm(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    unbatched = not isinstance(mod, nn.modules.batchnorm._BatchNorm) and x.dim() == mod_ndim(mod) - 1
    cdim = 0 if unbatched or x.dim() == 1 else 1
    what = f"'{name}' ({type(mod).__name__})"
    vary = varying_dims(P.slots.roots(labs[0]))
    if vary and cdim not in vary:  # channels on an axis the statistics run over (after a permute)
        raise GraphError(
            f"{what} normalizes per index of axis {cdim}, but the prunable channels of its input "
            f"({', '.join(owners(P.slots, labs[0]))}) lie along axis {vary}: its statistics are taken across those channels, so removing one would change the "
            "others. Nothing was changed.",
            hint="Move the channels to axis 1 before the norm (permute), normalize with LayerNorm over another "
                 "axis, or protect the producing layer.")
    per = consume(P.slots, labs[0], cdim, what)
    if getattr(mod, "weight", None) is not None or getattr(mod, "running_mean", None) is not None:
        P.members.append(Member(name, "norm", per))
    return along(per, out.shape, cdim)


def mod_ndim(mod: Any) -> int:
    return {"1d": 3, "2d": 4, "3d": 5}.get(type(mod).__name__[-2:].lower(), 4)


def _layernorm(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    vary = varying_dims(P.slots.roots(labs[0]))
    normed = set(range(labs[0].dim() - len(mod.normalized_shape), labs[0].dim()))
    if vary and not normed & set(vary):  # normalizes over other axes: each channel stays whole, weight unsliced
        return labs[0].clone()
    if len(mod.normalized_shape) != 1:
        P.slots.pin(labs[0])
        return labs[0].clone()
    per = consume(P.slots, labs[0], -1, f"'{name}' (LayerNorm)")
    if mod.elementwise_affine:
        P.members.append(Member(name, "ln", per))
    return along(per, out.shape, -1)


def _pin_through(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    """Layers whose channel count is structural in a way we do not slice (GroupNorm): keep their channels."""
    P.slots.pin(labs[0])
    return torch.zeros(out.shape, dtype=torch.long)


def _embedding(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    outs = P.slots.new(name, "out", mod.embedding_dim)
    P.members.append(Member(name, "emb", outs, producer=True))
    return along(outs, out.shape, -1)


def _prelu(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    vary = varying_dims(P.slots.roots(labs[0]))
    if mod.num_parameters == 1 or (vary and 1 not in vary):  # slopes along a non-channel axis: elementwise
        return labs[0].clone()
    per = consume(P.slots, labs[0], 1, f"'{name}' (PReLU)")
    P.members.append(Member(name, "prelu", per))
    return along(per, out.shape, 1)


def _flatten(P: Propagator, name: str, mod: Any, args: list[Any], labs: list[Any], out: torch.Tensor) -> torch.Tensor:
    return torch.flatten(labs[0], mod.start_dim, mod.end_dim)


def _mha(P: Propagator, name: str, mod: nn.MultiheadAttention, args: list[Any], labs: list[Any],
         out: Any) -> Any:
    q, k, v = labs[0], labs[1], labs[2]
    attn_out, weights = out
    what = f"'{name}' (MultiheadAttention)"
    qc = consume(P.slots, q, -1, what)
    for other in (k, v):
        if other is not q:
            P.slots.union_pairs(qc, consume(P.slots, other, -1, what))
    weight_lab = None if weights is None else torch.zeros(weights.shape, dtype=torch.long)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        P.slots.pin(qc)  # kdim/vdim or extra key/value biases: left as they are
        return along(qc, attn_out.shape, -1), weight_lab
    heads = P.slots.new(name, "heads", mod.num_heads)
    P.members.append(Member(name, "mha.embed", qc))
    P.members.append(Member(name, "mha.heads", heads, producer=True))
    if weights is not None and P.used(1):
        P.slots.pin(heads)  # per-head attention weights are read downstream: head count must stay
    return along(qc, attn_out.shape, -1), weight_lab


def _rnn(P: Propagator, name: str, mod: nn.RNNBase, args: list[Any], labs: list[Any], out: Any) -> Any:
    if not isinstance(args[0], torch.Tensor):
        raise GraphError(f"'{name}' ({type(mod).__name__}) got a {type(args[0]).__name__}; only plain tensor "
                         "inputs are supported for pruning recurrent layers. Nothing was changed.")
    what = f"'{name}' ({type(mod).__name__})"
    cols = consume(P.slots, labs[0], -1, what)
    hidden = P.slots.new(name, "hidden", mod.hidden_size)
    if getattr(mod, "proj_size", 0) or mod.mode not in GATES:
        P.slots.pin(hidden)
    P.members.append(Member(name, "rnn.in", cols))
    P.members.append(Member(name, "rnn.hidden", hidden, producer=True))
    if len(labs) > 1 and labs[1] is not None:  # user-provided initial states
        for h in labs[1] if isinstance(labs[1], tuple) else (labs[1],):
            P.slots.union_pairs(torch.broadcast_to(hidden, h.shape), h)
    dirs = 2 if mod.bidirectional else 1
    seq, state = out
    seq_lab = along(hidden.repeat(dirs), seq.shape, -1)
    if isinstance(state, tuple):
        return seq_lab, tuple(along(hidden, s.shape, -1) for s in state)
    return seq_lab, along(hidden, state.shape, -1)


def module_rule(mod: nn.Module) -> Any:
    """The rule for ``mod``, or None when it has none."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        return _conv
    if isinstance(mod, nn.Linear):
        return _linear
    if isinstance(mod, NORM_MODULES):
        return _norm
    if isinstance(mod, nn.LayerNorm):
        return _layernorm
    if isinstance(mod, nn.GroupNorm):
        return _pin_through
    if isinstance(mod, nn.Embedding):
        return _embedding
    if isinstance(mod, nn.PReLU):
        return _prelu
    if isinstance(mod, nn.Flatten):
        return _flatten
    if isinstance(mod, nn.MultiheadAttention):
        return _mha
    if isinstance(mod, nn.RNNBase):
        return _rnn
    if isinstance(mod, ELEMENTWISE_MODULES):
        return lambda P, name, mod, args, labs, out: labs[0].clone()
    if isinstance(mod, SPATIAL_MODULES):
        return lambda P, name, mod, args, labs, out: spatial(P.slots, labs[0], args[0], mod, out.shape,
                                                             f"'{name}' ({type(mod).__name__})")
    return None


__all__ = ["FIXED", "LEAF_TYPES", "module_rule"]
