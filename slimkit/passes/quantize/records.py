"""The typed records of the quantize passes (see :class:`slimkit.context.PassRecord`): what ran, stored whole
in the stage's report entry, with the notes the report's verdict shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimkit.context import PassContext, PassRecord


@dataclass
class QuantizeRecord(PassRecord):
    """Which backend a data-free quantize pass used (``dynamic``, ``weight-only``)."""

    key: ClassVar[str] = "quantize"
    method: str
    backend: str


def record_backend(ctx: PassContext, method: str, backend: str) -> None:
    """Add the :class:`QuantizeRecord` of ``method`` to ``ctx``; ``ctx.extras["quantize_backend"]`` keeps the
    backend under the name callers read before records existed."""
    ctx.add(QuantizeRecord(method=method, backend=backend))
    ctx.extras["quantize_backend"] = backend


@dataclass
class SensitivityRecord(PassRecord):
    """Per-layer sensitivity and the mixed-precision choice of a PTQ stage with ``mixed``
    (:func:`slimkit.passes.quantize.mixed.plan_mixed_ptq`): which layers were kept at ``keep_as`` and the
    fidelity ``score`` reached against the ``floor``."""

    key: ClassVar[str] = "sensitivity"
    metric: str
    floor: float
    keep_as: str
    bits: int
    data: str
    samples: int
    reference_accuracy: float | None
    baseline: float
    all_compressed: float
    table: list[dict[str, Any]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    score: float = 0.0
    met: bool = False
    reason: str = ""
    trace: list[dict[str, Any]] = field(default_factory=list)
    pass_name: str = "quantize:ptq"

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> SensitivityRecord:
        """From the mapping :func:`~slimkit.passes.quantize.mixed.plan_mixed_ptq` returns."""
        return cls(**{("pass_name" if k == "pass" else k): v for k, v in result.items()})

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {"pass": out.pop("pass_name"), **out}

    def notes(self, stage: int) -> list[str]:
        kept = ", ".join(self.keep) or "no layer"
        return [f"Mixed precision (stage {stage}): {self.metric} {self.score:.4f} "
                f"{'meets' if self.met else 'does NOT meet'} the floor {self.floor:.4g} keeping {kept} "
                f"at {self.keep_as} ({self.all_compressed:.4f} with every layer at {self.bits} bits)"
                + ("." if self.met else f": {self.reason}.")]
