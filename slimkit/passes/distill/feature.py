"""Feature distillation: capture named intermediate outputs with forward hooks and match the student's to
the teacher's through learned adapters (FitNets).

An adapter maps the student's width to the teacher's: a 1x1 conv for (B, C, H, W) maps (spatial size is
matched first by adaptive average pooling or bilinear resizing), a Linear on the last axis otherwise
((B, D) or (B, L, D) token features). Adapters are created from the shapes of a first batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError, did_you_mean
from slimkit.passes.distill.losses import feature_loss


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise ConfigError(f"feature distillation needs a module that returns a tensor, got {type(output).__name__}.")


def find_module(model: nn.Module, name: str, role: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists close names."""
    names = [n for n, _ in model.named_modules() if n]
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"the {role} has no module named '{name}'.{did_you_mean(name, names)}",
                          hint=f"Use a name from named_modules(), e.g. {', '.join(names[:6])}.") from None


class FeatureTap:
    """Forward hooks that keep the last output of each named module in ``self.outputs`` (by name)."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        self.model = model
        self.names = list(names)
        self.modules = [find_module(model, n, role) for n in self.names]
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self) -> FeatureTap:
        for name, module in zip(self.names, self.modules, strict=True):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[name] = _first_tensor(output)

        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs.clear()

    def take(self) -> list[torch.Tensor]:
        """The captured outputs in ``names`` order; clears them."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise ConfigError(f"module(s) {', '.join(missing)} did not run in the forward pass.",
                              hint="Pick modules that the model's forward calls.")
        out = [self.outputs[n] for n in self.names]
        self.outputs.clear()
        return out


@contextmanager
def tapped(model: nn.Module, names: Sequence[str], role: str) -> Iterator[FeatureTap]:
    """``with tapped(model, ["layer1"], "student") as tap: model(x); feats = tap.take()``."""
    tap = FeatureTap(model, names, role).attach()
    try:
        yield tap
    finally:
        tap.detach()


def match_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (B, C, H, W) map to ``size``: average pooling when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class FeatureAdapter(nn.Module):
    """Maps a student feature to the teacher feature's shape: 1x1 conv (maps) or Linear (last axis). A pooled
    (B, C, 1, 1) map and a (B, D) vector are matched through a Linear."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], *, always: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        s, t = tuple(student_shape), tuple(teacher_shape)
        self.spatial: tuple[int, ...] | None = None
        self.flatten_in = len(s) == 4 and s[2:] == (1, 1) and len(t) == 2  # pooled map -> vector
        self.unflatten_out = len(s) == 2 and len(t) == 4 and t[2:] == (1, 1)  # vector -> pooled map
        if self.flatten_in:
            s = s[:2]
        if self.unflatten_out:
            t = t[:2]
        if len(s) == 4 and len(t) == 4:
            self.spatial = t[2:]
            cs, ct = s[1], t[1]
            self.proj: nn.Module = (nn.Conv2d(cs, ct, 1, bias=False, device=device, dtype=dtype)
                                    if always or cs != ct else nn.Identity())
        elif len(s) == len(t) and len(s) >= 2 and s[:-1] == t[:-1]:
            ds, dt = s[-1], t[-1]
            self.proj = (nn.Linear(ds, dt, bias=False, device=device, dtype=dtype)
                         if always or ds != dt else nn.Identity())
        else:
            raise ConfigError(f"cannot match a student feature of shape {s} to a teacher feature of shape {t}.",
                              hint="Pair conv maps (B, C, H, W) with conv maps, or features that differ "
                                   "only in their last axis (B, D) / (B, L, D).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_in:
            x = x.flatten(1)
        if self.spatial is not None:
            x = match_spatial(x, self.spatial)
        x = self.proj(x)
        return x[:, :, None, None] if self.unflatten_out else x


def build_adapters(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], *,
                   always: bool = False) -> nn.ModuleList:
    """One :class:`FeatureAdapter` per pair, on the student feature's device and dtype."""
    return nn.ModuleList(
        FeatureAdapter(s.shape, t.shape, always=always, device=s.device, dtype=s.dtype)
        for s, t in zip(student_feats, teacher_feats, strict=True)
    )


def features_loss(adapters: nn.ModuleList, student_feats: Sequence[torch.Tensor],
                  teacher_feats: Sequence[torch.Tensor], kind: str = "mse") -> torch.Tensor:
    """Sum over pairs of :func:`feature_loss` between ``adapter(student)`` and the (detached) teacher."""
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for adapter, s, t in zip(adapters, student_feats, teacher_feats, strict=True):
        total = total + feature_loss(adapter(s), t.to(s.device), kind)
    return total
