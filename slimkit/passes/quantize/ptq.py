"""Static post-training quantization, BatchNorm folding, and the data-free log / binary weight passes.

PTQ: (1) check config against the model and the calibration data (typed errors, model untouched), (2) fold
BatchNorm into the preceding convolutions, (3) wrap layers with observers (fake quant off), (4) run calibration
batches, (5) freeze: compute qparams and switch fake quantization on. The result is a float model whose layers
are :class:`~slimkit.passes.quantize.modules.QuantWrapper` s with frozen quantizers.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from slimkit.config.layers import match_layer
from slimkit.config.quantize import Binary, BinaryConfig, Int, LogQuant, LogQuantConfig, PTQConfig
from slimkit.context import PassContext, eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError, DataError, did_you_mean
from slimkit.passes.quantize.fake_quant import (
    BinaryFakeQuantize,
    FakeQuantize,
    LogFakeQuantize,
    SignActivation,
)
from slimkit.passes.quantize.forms import FAKEQUANT, FAKEQUANT_NONLINEAR
from slimkit.passes.quantize.modules import (
    QUANTIZABLE,
    QuantWrapper,
    freeze_all,
    quantizable_layers,
    wrap_layers,
)
from slimkit.passes.quantize.records import SensitivityRecord
from slimkit.progress import track
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- BN folding
def fold_conv_bn_(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (running statistics) into ``conv`` (an ``nn.Conv*`` or a :class:`QuantWrapper` of one) in
    place. A per-channel symmetric weight quantizer has its scale multiplied by ``|gamma / std|``; other
    quantizers re-observe."""
    wrapper = conv if isinstance(conv, QuantWrapper) else None
    layer = wrapper.module if wrapper is not None else conv
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        w = layer.weight
        shape = [-1] + [1] * (w.dim() - 1)
        if getattr(layer, "transposed", False):
            raise ConfigError("cannot fold BatchNorm into a transposed convolution")
        w.mul_(factor.reshape(shape).to(w.dtype))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(w.dtype))
        else:
            layer.bias.copy_(new_bias)
    fq = wrapper.weight_fake_quant if wrapper is not None else None
    if isinstance(fq, FakeQuantize) and bool(fq.initialized):
        if fq.axis == 0 and fq.group_size is None and fq.symmetric and fq.scale.dim() == 1:
            with torch.no_grad():
                fq.scale.mul_(factor.abs().clamp_min(1e-12).to(fq.scale.dtype))
        else:  # re-observe the folded weight now (the observer may already be frozen)
            fq.reset_observer()
            with torch.no_grad():
                if fq.group_size is not None:
                    fq.observe(layer.weight)
                else:
                    fq.observer(layer.weight)
                    fq.set_qparams(*fq.observer.calculate_qparams())
    elif isinstance(fq, LogFakeQuantize | BinaryFakeQuantize):
        fq.observer_enabled.fill_(1)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QuantWrapper) or super().is_leaf_module(m, qualname)


def _is_conv(m: nn.Module) -> bool:
    inner = m.module if isinstance(m, QuantWrapper) else m
    return isinstance(inner, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not getattr(inner, "transposed", False)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BatchNorm consumes only that conv's output and each module is
    called once. Uses torch.fx; falls back to adjacent children of ``nn.Sequential`` when tracing fails."""
    mods = dict(model.named_modules())
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the safe fallback
        log.debug("fx tracing failed (%s); folding only inside nn.Sequential", exc)
        pairs = []
        for pname, parent in model.named_modules():
            if isinstance(parent, nn.Sequential):
                kids = list(parent.named_children())
                for (a, ma), (b, mb) in itertools.pairwise(kids):
                    if _is_conv(ma) and isinstance(mb, nn.modules.batchnorm._BatchNorm):
                        pre = f"{pname}." if pname else ""
                        pairs.append((pre + a, pre + b))
        return pairs
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or not _is_conv(mods[src.target]):
            continue
        if len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_bn(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm into its convolution (running statistics) and replace it by
    ``nn.Identity``, in eval mode (training flags restored). Returns the folded ``(conv, bn)`` names. The one
    folding step of PTQ (``fold_bn``) and QAT (``fold_bn_epoch``)."""
    with eval_mode(model):
        pairs = conv_bn_pairs(model)
        for conv_name, bn_name in pairs:
            fold_conv_bn_(model.get_submodule(conv_name), model.get_submodule(bn_name))
            model.set_submodule(bn_name, nn.Identity())
    if pairs:
        log.info("folded %d BatchNorm layer(s) into convolutions", len(pairs))
    return pairs


# -------------------------------------------------------------------------------------------- calibration
def _expected_shape(model: nn.Module, ctx: PassContext) -> str:
    if ctx.example_inputs:
        return f"(N, {', '.join(str(d) for d in ctx.example_inputs[0].shape[1:])})"
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear):
            return f"(N, {m.in_features}) (the first Linear layer's in_features)"
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            return f"(N, {m.in_channels}, ...) (the first convolution's in_channels)"
    return "the shape of the model's example_inputs"


def check_calibration(model: nn.Module, calibration: Iterable[Any] | None, ctx: PassContext,
                      limit: int) -> Iterator[Any]:
    """Check the first calibration batch with a forward pass on the unmodified model and return an iterator
    over at most ``limit`` inputs. Raises ConfigError when there is none, DataError when it does not fit."""
    if calibration is None:
        raise ConfigError("static quantization needs calibration data but none was given.",
                          hint="Pass calibration=loader (batches of x or (x, y)), or give the recipe a data section.")
    it = iter(calibration)
    first = next(it, None)
    if first is None:
        raise ConfigError("the calibration data is empty.", hint="Give at least one batch of representative inputs.")
    x = split_batch(first)[0]
    device = model_device(model)
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, x, device)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise DataError(
            f"calibration batches of shape {shape} do not fit the model: expected input shape "
            f"{_expected_shape(model, ctx)}. ({str(exc).splitlines()[0][:160]})",
            hint="Use calibration data from the same dataset and transforms as the model's inputs.",
        ) from None
    return (split_batch(b)[0] for b in itertools.islice(itertools.chain([first], it), limit))


@torch.no_grad()
def _n_batches(calibration: Any, limit: int | None) -> int | None:
    try:
        n = len(calibration)
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


def calibrate(model: nn.Module, inputs: Iterable[Any], total: int | None = None) -> int:
    """Run ``inputs`` through ``model`` in eval mode (a "calibrate" progress task, ``total`` batches when
    known); returns the number of batches."""
    device = model_device(model)
    n = 0
    with eval_mode(model), torch.no_grad(), track("calibrate", total=total) as task:
        for x in inputs:
            call_model(model, x, device)
            n += 1
            task.advance()
    return n


# -------------------------------------------------------------------------------------------- PTQ pass
def weight_quantizer(spec: Int | LogQuant | Binary) -> nn.Module:
    """A weight fake-quantizer for a spec (per-channel means axis 0, the output channels)."""
    if isinstance(spec, LogQuant):
        return LogFakeQuantize(spec.bits, spec.per_channel)
    if isinstance(spec, Binary):
        return BinaryFakeQuantize(spec.per_channel)
    return FakeQuantize(spec.bits, spec.symmetric, spec.unsigned, axis=0 if spec.per_channel else None,
                        group_size=spec.group_size, observer=spec.observer, percentile=spec.percentile)


def activation_quantizer(spec: Int, learnable: bool = False) -> FakeQuantize:
    """A per-tensor input fake-quantizer."""
    return FakeQuantize(spec.bits, spec.symmetric, spec.unsigned, axis=None, observer=spec.observer,
                        learnable=learnable, percentile=spec.percentile)


def check_layers(model: nn.Module, layers: list[tuple[str, nn.Module]], skip: list[str],
                 overrides: dict[str, Any], default: Any) -> dict[str, Any]:
    """The weight spec per layer name. Raises ConfigError for overrides that match no layer or a layer without
    output channels, and for group sizes that do not divide a layer's inputs."""
    names = dict(layers)
    all_mods = dict(model.named_modules())
    for pat, spec in overrides.items():
        hit = [n for n, m in all_mods.items() if n and match_layer(n, m, [pat])]
        if not hit:
            raise ConfigError(f"override '{pat}' matches no layer.{did_you_mean(pat, names)}",
                              hint=f"Quantizable layers: {', '.join(list(names)[:12])}.")
        types = tuple(QUANTIZABLE.values())
        bad = [n for n in hit if not isinstance(all_mods[n], (*types, QuantWrapper))]
        if bad and not any(n in names for n in hit):
            m = all_mods[bad[0]]
            per = " per channel" if getattr(spec, "per_channel", False) else ""
            raise ConfigError(
                f"override '{pat}' matches layer '{bad[0]}' ({type(m).__name__}), which has no weight with output "
                f"channels to quantize{per}.",
                hint=f"Quantizable layer types: {', '.join(QUANTIZABLE)}. Point the override at one of them.")
    specs = {}
    for name, mod in layers:
        pat = match_layer(name, mod, overrides)
        spec = overrides[pat] if pat is not None else default
        gs = getattr(spec, "group_size", None)
        inner = mod.weight.reshape(mod.weight.shape[0], -1).shape[1]
        if gs is not None and inner % gs:
            ok = [g for g in (8, 16, 32, 64, 128) if inner % g == 0]
            raise ConfigError(
                f"layer '{name}' ({type(mod).__name__}) has {inner} inputs per output channel, which do not divide "
                f"into groups of {gs}.", hint=f"Use group_size in {ok} or skip this layer." if ok else
                "Skip this layer or use per-channel without groups.")
        specs[name] = spec
    return specs


def _ptq_make(cfg: PTQConfig, specs: dict[str, Any]) -> Any:
    def make(name: str, layer: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        wfq = weight_quantizer(specs[name])
        ifq = activation_quantizer(cfg.activations) if cfg.activations is not None else None
        for fq in (wfq, ifq):
            if isinstance(fq, FakeQuantize):
                fq.enable_fake_quant(False)
        return wfq, ifq
    return make


def _rebuild_ptq(model: nn.Module, cfg: PTQConfig, manifest: dict[str, Any]) -> nn.Module:
    """Redo PTQ's structure without data (fold BatchNorm, wrap the same layers with the same quantizers,
    frozen); the checkpoint then loads the scales and weights. A mixed-precision stage reads which layers it
    kept at higher precision from the checkpoint itself."""
    if cfg.mixed is not None:
        from slimkit.passes.quantize.mixed import mixed_from_manifest

        cfg = mixed_from_manifest(model, cfg, manifest)
    if cfg.fold_bn:
        fold_bn(model)
    layers = list(quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn))
    specs = check_layers(model, layers, cfg.skip, cfg.overrides, cfg.weights)
    wrap_layers(model, layers, _ptq_make(cfg, specs))
    freeze_all(model)
    return model


@register_pass(PTQConfig, needs=("calibration",), default=True, rebuild=_rebuild_ptq,
               export=(FAKEQUANT, FAKEQUANT_NONLINEAR))
def ptq(model: nn.Module, cfg: PTQConfig, ctx: PassContext) -> nn.Module:
    """Static PTQ (see module docstring). With ``cfg.mixed``, the layers to keep at higher precision are chosen
    first by measured sensitivity on copies (:mod:`slimkit.passes.quantize.mixed`); the result is the stage's
    :class:`~slimkit.passes.quantize.records.SensitivityRecord` (``ctx.extras["sensitivity"]``)."""
    if cfg.mixed is not None:
        import copy

        from slimkit.passes.quantize.mixed import plan_mixed_ptq

        cfg, result, calib = plan_mixed_ptq(model, cfg, ctx, ptq)
        ctx.add(SensitivityRecord.from_result(result))
        ctx = copy.copy(ctx)
        ctx.calibration = calib
        if not any(True for _ in quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn)):
            log.warning("mixed precision kept every layer in float; nothing is quantized")
            if cfg.fold_bn:
                fold_bn(model)  # as the plan measured it, and as the rebuild hook redoes it
            return model
    layers = list(quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn))
    if not layers:
        raise ConfigError(f"no layer to quantize: the model has no {'/'.join(cfg.include)} layer outside skip.")
    check_layers(model, layers, cfg.skip, cfg.overrides, cfg.weights)
    inputs = check_calibration(model, ctx.calibration, ctx, cfg.calibration_batches)
    if cfg.fold_bn:
        fold_bn(model)
    layers = list(quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn))
    specs = check_layers(model, layers, cfg.skip, cfg.overrides, cfg.weights)
    wrap_layers(model, layers, _ptq_make(cfg, specs))
    n = calibrate(model, inputs, total=_n_batches(ctx.calibration, cfg.calibration_batches))
    freeze_all(model)
    log.info("PTQ: %d layer(s) quantized, %d calibration batch(es)", len(layers), n)
    return model


# ----------------------------------------------------------------------------------- data-free weight passes
def _weight_pass(model: nn.Module, cfg: Any, make_wfq: Any, make_ifq: Any = None) -> nn.Module:
    layers = list(quantizable_layers(model, ["Linear", "Conv1d", "Conv2d"], cfg.skip, cfg.filter_fn))
    if not layers:
        raise ConfigError("no Linear/Conv layer to quantize outside skip.")
    wrappers = wrap_layers(model, layers, lambda n, m: (make_wfq(), make_ifq() if make_ifq else None))
    with torch.no_grad():
        for w in wrappers.values():
            w.quantized_weight()  # computes the scale from the weight
            w.weight_fake_quant.freeze()
    return model


def _rebuild_data_free(model: nn.Module, cfg: Any, manifest: dict[str, Any]) -> nn.Module:
    """Data-free passes rebuild by running again on the fresh model (the checkpoint then loads the scales)."""
    from slimkit.registry import spec_for

    return spec_for(cfg).handler(model, cfg, PassContext())


@register_pass(LogQuantConfig, rebuild=_rebuild_data_free, export=FAKEQUANT_NONLINEAR)
def log_quant(model: nn.Module, cfg: LogQuantConfig, ctx: PassContext) -> nn.Module:
    """Power-of-two weights (per output channel scale = largest magnitude); activations stay float."""
    return _weight_pass(model, cfg, lambda: LogFakeQuantize(cfg.bits, cfg.per_channel))


@register_pass(BinaryConfig, rebuild=_rebuild_data_free, export=FAKEQUANT_NONLINEAR)
def binary(model: nn.Module, cfg: BinaryConfig, ctx: PassContext) -> nn.Module:
    """Binary weights ``sign(w) * mean|w|`` per output channel; optionally binary (sign) inputs."""
    return _weight_pass(model, cfg, lambda: BinaryFakeQuantize(True),
                        SignActivation if cfg.activations else None)
