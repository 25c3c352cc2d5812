"""Check a recipe's constraints against measured metrics and say the verdict in plain words."""

from __future__ import annotations

from typing import Any

from slimkit.config.recipe import ConstraintsConfig


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def speedup(baseline: dict[str, Any], final: dict[str, Any]) -> float | None:
    b = (baseline.get("latency_ms") or {}).get("median")
    f = (final.get("latency_ms") or {}).get("median")
    return _ratio(b, f)


def check_constraints(cfg: ConstraintsConfig, baseline: dict[str, Any], final: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per constraint: ``{"name", "limit", "value", "met"}``; ``met`` is None when not measured."""
    rows: list[dict[str, Any]] = []

    def add(name: str, limit: float | None, value: float | None, ok: Any) -> None:
        if limit is None:
            return
        rows.append({"name": name, "limit": limit, "value": value, "met": None if value is None else bool(ok(value, limit))})

    acc_b, acc_f = baseline.get("accuracy"), final.get("accuracy")
    drop = None if acc_b is None or acc_f is None else round(acc_b - acc_f, 6)
    add("max_accuracy_drop", cfg.max_accuracy_drop, drop, lambda v, lim: v <= lim + 1e-9)
    add("min_accuracy", cfg.min_accuracy, acc_f, lambda v, lim: v >= lim)
    add("max_size_bytes", cfg.max_size_bytes, final.get("size_bytes"), lambda v, lim: v <= lim)
    add("max_size_ratio", cfg.max_size_ratio, _ratio(final.get("size_bytes"), baseline.get("size_bytes")),
        lambda v, lim: v <= lim)
    add("min_speedup", cfg.min_speedup, speedup(baseline, final), lambda v, lim: v >= lim)
    add("min_sparsity", cfg.min_sparsity, final.get("sparsity"), lambda v, lim: v >= lim)
    fid = final.get("fidelity") or {}
    add("min_cosine", cfg.min_cosine, fid.get("cosine"), lambda v, lim: v >= lim)
    add("min_top1_agreement", cfg.min_top1_agreement, fid.get("top1_agreement"), lambda v, lim: v >= lim)
    return rows


QUALITY = ("max_accuracy_drop", "min_accuracy", "min_cosine", "min_top1_agreement")
RECOVERY_KINDS = ("finetune", "distill")


def hopeless(cfg: ConstraintsConfig, baseline: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    """Why a run is already lost after a stage (a quality constraint missed, which later stages that do not
    train cannot win back), or None."""
    missed = [r for r in check_constraints(cfg, baseline, metrics) if r["name"] in QUALITY and r["met"] is False]
    if not missed:
        return None
    return "; ".join(f"{r['name']} (limit {r['limit']}, got {_num(r['value'])})" for r in missed)


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def verdict(baseline: dict[str, Any], final: dict[str, Any], rows: list[dict[str, Any]],
            notes: list[str] | None = None) -> str:
    """Plain words: what changed, whether every constraint was met, and why not where it was not."""
    parts: list[str] = []
    size_r = _ratio(final.get("size_bytes"), baseline.get("size_bytes"))
    sp = speedup(baseline, final)
    acc_b, acc_f = baseline.get("accuracy"), final.get("accuracy")
    if acc_b is not None and acc_f is not None:
        parts.append(f"Accuracy {_fmt_pct(acc_b)} -> {_fmt_pct(acc_f)} ({100 * (acc_f - acc_b):+.2f} points).")
    fid = final.get("fidelity") or {}
    if acc_f is None and fid.get("cosine") is not None:
        parts.append(f"Outputs vs the baseline: mean cosine {fid['cosine']:.4f} (min {fid['cosine_min']:.4f})"
                     + (f", top-1 agreement {_fmt_pct(fid['top1_agreement'])}" if fid.get("top1_agreement") is not None
                        else "") + ".")
    if size_r is not None:
        parts.append(f"On-disk size {size_r:.3f}x of the baseline ({1 / size_r:.2f}x smaller)." if size_r > 0 else "")
    if sp is not None:
        rt = (final.get("latency_ms") or {}).get("runtime", "torch")
        if sp >= 1.05:
            parts.append(f"Latency {sp:.2f}x faster ({rt}, batch {(final.get('latency_ms') or {}).get('batch')}).")
        elif sp <= 0.95:
            parts.append(f"Latency {1 / sp:.2f}x SLOWER than the baseline ({rt}).")
        else:
            parts.append(f"Latency unchanged within 5% ({sp:.2f}x, {rt}).")
    if final.get("sparsity") and final["sparsity"] > 0.05 and sp is not None and sp < 1.05:
        parts.append("Unstructured sparsity shrinks the stored model but dense CPU kernels still multiply the zeros, "
                     "so it does not make inference faster; structured pruning does.")
    parts.extend(notes or [])
    if rows:
        unmet = [r for r in rows if r["met"] is False]
        unknown = [r for r in rows if r["met"] is None]
        if unmet:
            parts.append("NOT MET: " + "; ".join(f"{r['name']} (limit {r['limit']}, got {_num(r['value'])})" for r in unmet) + ".")
        if unknown:
            parts.append("Not measured: " + ", ".join(r["name"] for r in unknown) + ".")
        if not unmet and not unknown:
            parts.append(f"All {len(rows)} constraints met.")
    else:
        parts.append("No constraints were set.")
    return " ".join(p for p in parts if p)


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def choose_delivery(cfg: ConstraintsConfig, baseline: dict[str, Any], stages: list[dict[str, Any]],
                    deliver: str) -> tuple[int, str]:
    """Which finished stage the run delivers as ``final``, and why, in plain words.

    ``stages`` are the finished stage records in order (``{"index", "pass", "metrics", ...}``, at least one).
    ``deliver="last"`` takes the last one. ``deliver="best"`` takes the last one when it meets every
    constraint (or when no stage does, or none are set); otherwise the latest earlier stage that meets every
    constraint, so ``final`` is never silently worse than an earlier stage that met them all. A constraint
    that could not be measured (``met`` None) does not count against a stage.
    """
    last = stages[-1]
    rows = {st["index"]: check_constraints(cfg, baseline, st["metrics"]) for st in stages}
    if not rows[last["index"]]:
        return last["index"], "the last stage (no constraints were set)"
    meets = [st for st in stages if all(r["met"] is not False for r in rows[st["index"]])]
    if deliver == "last":
        earlier = [st for st in meets if st is not last]
        why = "the last stage (deliver: last)"
        if last not in meets and earlier:
            why += (f"; stage {earlier[-1]['index']} ({earlier[-1]['pass']}) met every constraint and is not "
                    "delivered because the recipe asks for the last stage")
        return last["index"], why
    if last in meets:
        return last["index"], "the last stage, which meets every constraint"
    if not meets:
        return last["index"], "the last stage; no stage met every constraint"
    best = meets[-1]
    unmet = [r["name"] for r in rows[last["index"]] if r["met"] is False]
    return best["index"], (f"stage {best['index']} ({best['pass']}), the last stage that met every constraint: "
                           f"stage {last['index']} ({last['pass']}) did not meet {', '.join(unmet)} "
                           "(set deliver: last to deliver it anyway)")
