"""int8 for a sentence encoder exported by :func:`slimkit.exporters.onnx_transformer.export_encoder_onnx` that
keeps fp32 fidelity: dynamic int8 (MatMul + Gather, so the embedding table shrinks too) with per-channel
weights, SmoothQuant-style scale migration into the Q/K/V and FFN input projections, the largest GELU
channels of the FFN output projections in fp32 on the side where the calibration fidelity needs them
(measured per layer), and the few MatMuls most sensitive to int8 activations kept as 8-bit weight-only
``MatMulNBits`` (fp32 activations), picked by measured per-layer sensitivity within the size budget.
The fp32 graph transforms are in :mod:`slimkit.exporters.encoder_smooth`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import ConfigError
from slimkit.evaluation.latency import cpu_has_vnni
from slimkit.exporters.encoder_smooth import (
    activation_absmax,
    calibration_feeds,
    outlier_targets,
    smooth_inputs,
    smooth_into_values,
    smoothing_groups,
    split_outlier_channels,
    weight_matmuls,
)
from slimkit.exporters.onnx_transformer import optimize_encoder_onnx, ort_embed

log = logging.getLogger(__name__)

__all__ = ["EncoderInt8Config", "prepare_encoder_int8", "quantize_encoder_int8"]


@dataclass(frozen=True)
class EncoderInt8Config:
    """Settings of :func:`quantize_encoder_int8` (recorded in its result).

    ``per_channel``: int8 weights per output channel. ``reduce_range``: 7-bit weights; None = only on CPUs
    without VNNI (u8s8 saturation). ``smooth_nodes``: regexes of MatMul names whose input activation scales
    migrate into the weights (``x/s @ diag(s) W``, an explicit Mul before the MatMul: the LayerNorm output
    also feeds the residual, so it cannot absorb ``1/s``); ``smooth_alpha`` the migration strength.
    ``smooth_output_nodes``: regexes of attention output projections smoothed the same way with the scale
    folded exactly into the value projection (:func:`slimkit.exporters.encoder_smooth.smooth_into_values`:
    no run-time op); () turns it off.
    ``outlier_nodes``: regexes of MatMuls fed by an activation (GELU) of a biased MatMul: their
    ``outlier_channels`` input channels with the largest calibration range are computed in fp32 on the
    side (LLM.int8()-style decomposition), and zeroed in the int8 path by zeroing the producing weight
    columns (GELU(0) = 0), so the int8 activation range shrinks at no extra full-size op.
    ``outlier_select``: keep only the side paths the calibration floors need, measured: each is left out of
    the full set once (one int8 build on the calibration batches each), then they are dropped one at a
    time, least needed first, while ``cosine_floor`` / ``cosine_min_floor`` hold (the result's
    ``outlier_selection`` has every measurement). Each side path costs run time (two small fp32 MatMuls and
    a BiasGelu); False keeps every match of ``outlier_nodes``.
    ``smooth_select``: the same measured selection for the smoothing ``Mul`` of each group of
    ``smooth_nodes`` (one per LayerNorm output: Q/K/V or packed QKV, FFN input), after the side paths (with
    the side paths kept): a group whose Mul the floors do not need loses it (its weights keep their
    unsmoothed values); the result's ``smoothing_selection`` has every measurement. False smooths every group.
    ``weight_only``: MatMul names kept as 8-bit ``MatMulNBits`` (block ``block_size``, fp32 activations);
    None = choose them by measured sensitivity on the calibration batches (at most ``max_weight_only``, and
    within ``size_budget`` x fp32 bytes) until ``cosine_floor`` / ``cosine_min_floor`` are met there.
    ``rank_sensitivity``: measure and return the per-MatMul sensitivity table even when no search is needed
    (for reports; one int8 build per MatMul).
    ``per_tensor_nodes``: regexes of MatMuls whose int8 weights get one scale instead of one per output
    channel even when ``per_channel`` (onnxruntime's per-tensor int8 kernels are a few percent faster). For
    MiniLM, Q/K/V and attention-output projections per tensor cost about 3e-4 of mean cosine on held-out
    sentences but take the calibration minimum under the floor, so the default is none.
    ``block_skip_layernorm`` and ``static_shapes``: the exact rewrites of
    :mod:`slimkit.exporters.encoder_graph` (no SkipLayerNormalization fusion by onnxruntime, whose CPU kernel
    is slow; constant Reshape targets instead of shape subgraphs). ``fold_token_types``: constant token-type
    ids folded into the position-embedding table (the lookup and its id subgraph go); None = only on the fused
    graph, where it removes 16 of the nodes onnxruntime runs (on the unfused MiniLM graph it saves less, and
    the calibration minimum with every side path moved from 0.9936 to 0.9913, under the 0.992 floor, which
    would start the weight-only search: noise-level, but not taken by default). ``scalar_zero_points``:
    the all-zero per-channel weight zero points written as one scalar (onnxruntime's int8 GEMM has a slower
    per-column zero-point path). All four are exact (the fold up to float rounding).
    ``fuse_attention_heads``: when set (the number of attention heads), the graph is first fused by
    :func:`~slimkit.exporters.onnx_transformer.optimize_encoder_onnx` and smoothing (``^Attention_N$``: the packed Q/K/V weight), the outlier
    side paths (``BiasGelu``) and int8 (QAttention, QEmbedLayerNormalization) apply to the fused graph."""

    per_channel: bool = True
    reduce_range: bool | None = None
    quantize_embeddings: bool = True
    smooth_nodes: tuple[str, ...] = (r"intermediate/dense", r"attention/self/(query|key|value)", r"^Attention_\d+$")
    smooth_alpha: float = 0.8
    smooth_output_nodes: tuple[str, ...] = (r"attention/output/dense",)
    outlier_nodes: tuple[str, ...] = (r"layer\.\d+/output/dense",)
    outlier_channels: int = 16
    outlier_select: bool = True
    smooth_select: bool = True
    weight_only: tuple[str, ...] | None = None
    max_weight_only: int = 4
    block_size: int = 128
    accuracy_level: int = 4
    cosine_floor: float = 0.996
    cosine_min_floor: float = 0.992
    size_budget: float = 0.26
    rank_sensitivity: bool = False
    per_tensor_nodes: tuple[str, ...] = ()
    block_skip_layernorm: bool = True
    static_shapes: bool = True
    fold_token_types: bool | None = None
    scalar_zero_points: bool = True
    fuse_attention_heads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _embed_all(path: Path, batches: Sequence[Any]) -> np.ndarray:
    from slimkit.evaluation.latency import ort_session

    sess = ort_session(path, 2)
    return np.concatenate([ort_embed(sess, f["input_ids"], f["attention_mask"]) for f in map(calibration_feeds, batches)])


def _build(smoothed: Path, out: Path, cfg: EncoderInt8Config, reduce_range: bool, weight_only: Sequence[str],
           keep_fp32: Sequence[str] = ()) -> Path:
    """Dynamic int8 of every weight MatMul (and Gather) except ``weight_only``, which become MatMulNBits."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    ops = ["MatMul", "Gather"] if cfg.quantize_embeddings else ["MatMul"]
    if cfg.fuse_attention_heads:
        ops += ["Attention", "EmbedLayerNormalization"] if cfg.quantize_embeddings else ["Attention"]
    skip = {*weight_only, *keep_fp32}
    per_tensor = [n for n in weight_matmuls(onnx.load(str(smoothed), load_external_data=False))
                  if n not in skip and any(re.search(p, n) for p in cfg.per_tensor_nodes)] if cfg.per_channel else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = out.with_name(out.stem + "-pc.onnx") if per_tensor else out
        quantize_dynamic(str(smoothed), str(first), op_types_to_quantize=ops, per_channel=cfg.per_channel,
                         reduce_range=reduce_range, nodes_to_exclude=[*skip, *per_tensor],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, **cfg.extra})
        if per_tensor:
            quantize_dynamic(str(first), str(out), op_types_to_quantize=["MatMul"], per_channel=False,
                             reduce_range=reduce_range, nodes_to_quantize=per_tensor,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, **cfg.extra})
            first.unlink()
        if weight_only:
            algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=True,
                                                accuracy_level=cfg.accuracy_level, bits=8)
            # nodes_to_include alone does not restrict it (it also takes every MatMul of its op types):
            # the fp32 side MatMuls of the outlier decomposition must be excluded explicitly
            q = MatMulNBitsQuantizer(onnx.load(str(out)), bits=8, block_size=cfg.block_size, is_symmetric=True,
                                     accuracy_level=cfg.accuracy_level, nodes_to_include=list(weight_only),
                                     nodes_to_exclude=list(keep_fp32), algo_config=algo)
            q.process()
            q.model.save_model_to_file(str(out), False)
    if cfg.scalar_zero_points:  # exact: per-channel s8 weights are symmetric (all-zero zero points)
        from slimkit.exporters.encoder_graph import scalar_weight_zero_points

        proto = onnx.load(str(out))
        if scalar_weight_zero_points(proto):
            onnx.save_model(proto, str(out))
    return out


def _quantize_only(src: Path, out: Path, unit: str, cfg: EncoderInt8Config, reduce_range: bool) -> Path:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=cfg.per_channel,
                         reduce_range=reduce_range, nodes_to_quantize=[unit],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _base_graph(src: Path, batches: Sequence[Any], config: EncoderInt8Config, work: Path
                ) -> tuple[Any, dict[str, np.ndarray], list[str], list[str], dict[str, int]]:
    """The fp32 graph before smoothing and outlier side paths: fused when ``config.fuse_attention_heads``,
    with the exact rewrites ``fold_token_types`` and ``static_shapes`` (constant Reshape targets: the side
    paths hold no Reshape). Returns ``(proto, absmax, smoothing group inputs, outlier targets, rewrites)``;
    ``absmax`` holds the calibration statistics of every tensor smoothing and the side paths read, measured
    in one pass (the scale migration is exact, so they hold for any subset of smoothing groups)."""
    from slimkit.exporters.encoder_graph import fold_token_types, static_reshapes
    from slimkit.exporters.onnx_int8 import load_onnx

    if config.fuse_attention_heads:  # onnxruntime's fused Attention/EmbedLayerNormalization/BiasGelu graph
        hidden = next(iter(weight_matmuls(load_onnx(src)).values()))[1].dims[0]
        optimize_encoder_onnx(src, work / "fused.onnx", num_heads=config.fuse_attention_heads, hidden_size=hidden,
                              bias_gelu=False)
        src = work / "fused.onnx"
    proto = load_onnx(src)
    fold = bool(config.fuse_attention_heads) if config.fold_token_types is None else config.fold_token_types
    rewrites = {"token_type_fold": fold_token_types(proto) if fold else 0,
                "static_reshapes": static_reshapes(proto) if config.static_shapes else 0}
    groups = list(smoothing_groups(proto, config.smooth_nodes)) if config.smooth_nodes else []
    mms = weight_matmuls(proto)
    targets = outlier_targets(proto, config.outlier_nodes) if config.outlier_channels > 0 else []
    reads = [*groups, *(mms[t][0].input[0] for t in targets),
             *(n.input[0] for k, (n, _) in mms.items() if any(re.search(p, k) for p in config.smooth_output_nodes))]
    absmax = activation_absmax(proto, sorted(set(reads)), batches, work) if reads else {}
    return proto, absmax, groups, targets, rewrites


def _smoothed(base: Any, absmax: dict[str, np.ndarray], config: EncoderInt8Config, groups: Sequence[str]
              ) -> tuple[Any, list[str]]:
    """A copy of ``base`` with the smoothing ``Mul`` of ``groups`` (input tensors) and the value-folded
    smoothing of the attention output projections (no op). Returns ``(proto, smoothed node names)``."""
    proto = copy.deepcopy(base)
    smoothed = smooth_inputs(proto, config.smooth_nodes, config.smooth_alpha, [], Path(), stats=absmax,
                             only=groups) if groups else []
    if config.smooth_output_nodes:
        smoothed += smooth_into_values(proto, config.smooth_output_nodes, config.smooth_alpha, [], Path(),
                                       stats=absmax)
    return proto, smoothed


def _with_outliers(base: Any, targets: Sequence[str], absmax: dict[str, np.ndarray], config: EncoderInt8Config
                   ) -> tuple[Any, list[str], int]:
    """A copy of ``base`` with the outlier side paths of ``targets`` and the residual ``Sum`` rewrite.
    Returns ``(proto, fp32 side MatMul names, n_sums)``."""
    from slimkit.exporters.encoder_graph import block_skip_layernorm

    proto = copy.deepcopy(base)
    side = split_outlier_channels(proto, targets, config.outlier_channels, absmax)
    return proto, side, block_skip_layernorm(proto) if config.block_skip_layernorm else 0


def prepare_encoder_int8(fp32_onnx: str | os.PathLike[str], calibration: Sequence[Any], config: EncoderInt8Config,
                         work: str | os.PathLike[str], *, outlier_nodes: Sequence[str] | None = None,
                         smooth_groups: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The fp32 graph that :func:`quantize_encoder_int8` quantizes, as an ONNX proto: fused first when
    ``config.fuse_attention_heads`` (:func:`optimize_encoder_onnx`), then SmoothQuant scale migration (the
    ``Mul`` of the groups whose input tensors are ``smooth_groups``; None = every group), the exact rewrites
    and the outlier side paths of ``outlier_nodes`` (MatMul names; None = every match of
    ``config.outlier_nodes``, with no per-layer selection). It computes what ``fp32_onnx`` computes (up to
    float rounding). Returns ``(proto, {"smoothed", "smoothing_groups", "outlier_targets", "outlier_side_nodes",
    "rewrites"})``; ``work`` is a scratch directory."""
    work, batches = Path(work), list(calibration)
    base, absmax, groups, targets, rewrites = _base_graph(Path(fp32_onnx), batches, config, work)
    proto, smoothed = _smoothed(base, absmax, config,
                                groups if smooth_groups is None else [g for g in groups if g in set(smooth_groups)])
    chosen = targets if outlier_nodes is None else [t for t in targets if t in set(outlier_nodes)]
    proto, side, n_sums = _with_outliers(proto, chosen, absmax, config)
    return proto, {"smoothed": smoothed, "smoothing_groups": groups, "outlier_targets": targets,
                   "outlier_side_nodes": side, "rewrites": {**rewrites, "sum_before_layernorm": n_sums}}


def _select_units(units: Sequence[str], fidelity_with: Any, cfg: EncoderInt8Config) -> tuple[list[str], dict[str, Any]]:
    """The units (outlier side paths, smoothing groups) the calibration floors need: ``fidelity_with(kept)``
    is the calibration fidelity of the int8 build with only those units. Each unit is measured left out of
    the full set; then they are dropped one at a time, least needed first, while the floors hold. Returns
    ``(kept, {"all": fidelity, "without": [{"node", "cosine", "cosine_min"}], "steps", "kept"})``."""
    def margin(f: dict[str, float]) -> float:
        return min(f["cosine"] - cfg.cosine_floor, f["cosine_min"] - cfg.cosine_min_floor)

    full = fidelity_with(list(units))
    record: dict[str, Any] = {"all": full, "without": [], "steps": [], "kept": list(units)}
    if margin(full) < 0:  # the floors need every unit (and maybe more: the weight-only search follows)
        return list(units), record
    without = {t: fidelity_with([u for u in units if u != t]) for t in units}
    record["without"] = [{"node": t, **f} for t, f in without.items()]
    keep = list(units)
    for t in sorted(units, key=lambda t: -margin(without[t])):
        trial = [u for u in keep if u != t]
        f = without[t] if len(keep) == len(units) else fidelity_with(trial)
        dropped = margin(f) >= 0
        record["steps"].append({"drop": t, **f, "dropped": dropped})
        if dropped:
            keep = trial
    record["kept"] = keep
    return keep, record


def quantize_encoder_int8(fp32_onnx: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                          calibration: Sequence[Any], config: EncoderInt8Config | None = None) -> dict[str, Any]:
    """int8 for a sentence encoder exported by
    :func:`~slimkit.exporters.onnx_transformer.export_encoder_onnx` that keeps fp32 fidelity.

    1. SmoothQuant-style migration of activation outliers into the weights of ``config.smooth_nodes``
       (the Q/K/V and FFN input projections: their inputs, LayerNorm outputs, have outlier channels),
       with scales from ``calibration`` (batches of ``(input_ids, attention_mask)`` or dicts of them).
    2. Outlier-channel decomposition of ``config.outlier_nodes`` (the FFN output projections): the few
       GELU channels with the largest range go through a small fp32 side path; with
       ``config.outlier_select`` only on the layers where the calibration floors need it (measured).
    3. Dynamic int8 (``quantize_dynamic``, u8 activations, s8 per-channel weights) of MatMul and Gather.
    4. Mixed precision: the MatMuls whose int8 activations cost most fidelity (measured one at a time on
       ``calibration``, see :mod:`slimkit.analysis.sensitivity`) become 8-bit weight-only MatMulNBits, greedily,
       until the cosine floors hold on ``calibration`` or the size budget / ``max_weight_only`` is reached.

    5. Exact graph rewrites (``config.static_shapes``, ``config.block_skip_layernorm``): constant Reshape
       targets, and no SkipLayerNormalization fusion by onnxruntime (:mod:`slimkit.exporters.encoder_graph`).

    Returns ``{"artifact", "size_bytes", "size_ratio", "settings", "weight_only", "smoothed", "outlier_side_nodes",
    "outlier_selection", "smoothing_selection", "rewrites", "sensitivity", "assignment", "calibration_fidelity"}``.
    Writes ``out_path`` atomically."""
    import onnx

    from slimkit.analysis.sensitivity import layer_sensitivity, mixed_assignment, sensitivity_table
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    cfg = config or EncoderInt8Config()
    batches = list(calibration)
    if not batches:
        raise ConfigError("quantize_encoder_int8 needs calibration batches of (input_ids, attention_mask).",
                          hint="Tokenize a few dozen representative sentences (slimkit.data.sentences).")
    src, out = Path(fp32_onnx), Path(out_path)
    reduce_range = (not bool(cpu_has_vnni())) if cfg.reduce_range is None else cfg.reduce_range
    fp32_bytes = onnx_size_bytes(src)
    with tempfile.TemporaryDirectory(prefix="slimkit-enc-int8-") as td:
        work = Path(td)
        base, absmax, groups, targets, base_rewrites = _base_graph(src, batches, cfg, work)
        ref = _embed_all(src, batches)
        fixed_weight_only = list(cfg.weight_only or ())

        def fidelity_with(smooth: Sequence[str], paths: Sequence[str]) -> dict[str, float]:
            proto, _, side = _with(smooth, paths)
            onnx.save_model(proto, str(work / "sel.onnx"))
            cand = _build(work / "sel.onnx", work / "cand.onnx", cfg, reduce_range, fixed_weight_only, side)
            return cosine_stats(_embed_all(cand, batches), ref)

        def _with(smooth: Sequence[str], paths: Sequence[str]) -> tuple[Any, list[str], list[str]]:
            proto, smoothed = _smoothed(base, absmax, cfg, smooth)
            proto, side, _ = _with_outliers(proto, paths, absmax, cfg)
            return proto, smoothed, side

        keep, selection, keep_groups, smooth_selection = list(targets), None, list(groups), None
        if cfg.outlier_select and targets:  # side paths first: each costs more run time than a smoothing Mul
            keep, selection = _select_units(targets, lambda paths: fidelity_with(groups, paths), cfg)
        if cfg.smooth_select and groups:
            keep_groups, smooth_selection = _select_units(groups, lambda smooth: fidelity_with(smooth, keep), cfg)
        # a selection keeps a set that met the floors whenever its full set did
        selected_meets = any(r is not None and min(r["all"]["cosine"] - cfg.cosine_floor,
                                                   r["all"]["cosine_min"] - cfg.cosine_min_floor) >= 0
                             for r in (selection, smooth_selection))
        proto, smoothed = _smoothed(base, absmax, cfg, keep_groups)
        proto, side, n_sums = _with_outliers(proto, keep, absmax, cfg)
        rewrites = {**base_rewrites, "sum_before_layernorm": n_sums}
        names = list(weight_matmuls(proto))
        sm_path = work / "smoothed.onnx"
        onnx.save_model(proto, str(sm_path))

        def fidelity_of(weight_only: Sequence[str]) -> dict[str, float]:
            cand = _build(sm_path, work / "cand.onnx", cfg, reduce_range, weight_only, side)
            return cosine_stats(_embed_all(cand, batches), ref)

        def margin(weight_only: Sequence[str]) -> float:
            f = fidelity_of(weight_only)
            return min(f["cosine"] - cfg.cosine_floor, f["cosine_min"] - cfg.cosine_min_floor)

        table, plan = None, None
        if cfg.weight_only is not None:
            weight_only = list(cfg.weight_only)
        elif not cfg.rank_sensitivity and (selected_meets or margin([]) >= 0):
            weight_only = []  # the floors hold without weight-only MatMuls (measured above or now)
        else:
            probe = batches[: max(1, len(batches) // 2)]
            probe_ref = ref[: sum(len(calibration_feeds(b)["input_ids"]) for b in probe)]

            def only(unit: str) -> float:  # this MatMul int8, everything else fp32
                _quantize_only(sm_path, work / "one.onnx", unit, cfg, reduce_range)
                return cosine_stats(_embed_all(work / "one.onnx", probe), probe_ref)["cosine"]

            sens = layer_sensitivity(names, only, baseline=1.0)
            extra = {u: int(np.prod(w.dims)) // cfg.block_size * 4 for u, (_, w) in weight_matmuls(proto).items()}
            all_int8 = onnx_size_bytes(_build(sm_path, work / "c.onnx", cfg, reduce_range, [], side))
            plan = mixed_assignment(sens, fidelity_floor=0.0, baseline=0.0, evaluate=margin, costs=extra,
                                    budget=max(int(cfg.size_budget * fp32_bytes) - all_int8, 0),
                                    max_keep=cfg.max_weight_only)
            weight_only, table = plan.keep, sensitivity_table(sens)
        final = _build(sm_path, work / "final.onnx", cfg, reduce_range, weight_only, side)
        calib_fid = cosine_stats(_embed_all(final, batches), ref)
        from slimkit._io import atomic_write

        atomic_write(out, lambda tmp: onnx.save_model(onnx.load(str(final)), str(tmp)))
    size = onnx_size_bytes(out)
    log.info("encoder int8 %s: %d bytes (%.1f%% of fp32), outlier paths on %d of %d, smoothing Mul on %d of %d, "
             "weight-only %s, calibration cosine %.5f / min %.5f", out, size, 100 * size / fp32_bytes, len(keep),
             len(targets), len(keep_groups), len(groups), weight_only, calib_fid["cosine"], calib_fid["cosine_min"])
    return {"artifact": out, "size_bytes": size, "size_ratio": size / fp32_bytes,
            "settings": {**asdict(cfg), "reduce_range": reduce_range, "vnni": bool(cpu_has_vnni())},
            "weight_only": list(weight_only), "smoothed": smoothed, "outlier_side_nodes": side,
            "outlier_selection": selection, "smoothing_selection": smooth_selection, "rewrites": rewrites,
            "sensitivity": table,
            "assignment": plan.to_dict() if plan is not None else None, "calibration_fidelity": calib_fid}
