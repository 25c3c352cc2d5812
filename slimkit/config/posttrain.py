"""Post-training structured pruning with reconstruction (no labels, no training)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.config.base import PassConfig, StrictModel
from slimkit.config.layers import LayerFilterFn, filter_fn_field, skip_field


class BlockRefitConfig(StrictModel):
    """Refit each block of a compressed model so that its output matches the original model's, from
    unlabelled calibration data only, block after block in the order they run.

    A block is a module whose name ends in its index (``encoder.layer.3``, ``features.7``; see
    ``slimkit.analysis.calibration.block_of``), or the blocks named in ``blocks``. Each block receives the
    *compressed* model's inputs (so it also corrects what the blocks before it left) and is fit to the
    *original* model's block output with Adam on the relative squared error (padding tokens excluded), its
    structure and its zeros (sparsity) unchanged. The last ``1/holdout`` of the batches are not fit: a
    block's refit is kept only if their error went down. This is gradient-based reconstruction on the
    calibration data (BRECQ-style), not training on labels: it needs no labels and changes no shape.
    Memory: one block's inputs and target outputs over the calibration batches are held at a time."""

    steps: int = Field(300, ge=1, le=100_000, description="Adam steps per block (one calibration batch each)")
    lr: float = Field(3e-4, gt=0, le=1, description="Adam learning rate")
    blocks: list[str] = Field(default_factory=list, description="module names to refit, in order; empty: "
                                                                "every indexed block that holds a weighted layer")
    holdout: int = Field(10, ge=2, le=100, description="every holdout-th batch (at least one) checks the refit")
    batches: int | None = Field(None, ge=1, description="use at most this many calibration batches")
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate over the steps of "
                                                    "each fit: constant, or cosine decay to 0")
    final_steps: int = Field(0, ge=0, le=100_000, description="after the blocks: Adam steps on the whole model's "
                             "output (last hidden state / logits) against the original's, every weight trainable, "
                             "zeros kept, the best held-out state kept (0: none)")
    final_lr: float | None = Field(None, gt=0, le=1, description="learning rate of the final steps (None: lr)")
    final_check: int = Field(25, ge=1, le=10_000, description="final steps between held-out checks; the fit stops "
                             "after 3 checks without improvement")



class PostTrainPruneConfig(PassConfig):
    """Remove channels, filters, attention heads and FFN width from a trained model using only unlabelled
    calibration data, then refit what reads them.

    Only *reconstructable* dependency groups are pruned: those whose channels are read by exactly one weighted
    layer (a ``Linear`` or a ``Conv2d`` with ``groups=1``, the *consumer*) and otherwise pass only through
    per-channel ops (BatchNorm, depthwise convs, activations). Residual streams are kept.

    ``criterion`` orders the units of a group and measures what removing them costs:
    ``reconstruction`` (ThiNet-style greedy with least-squares refit, exact from the consumer's input
    statistics; that error curve is scaled by how much of it reaches the model's output, *measured* as the
    fidelity loss of the whole model with the group pruned and refit, at ``sensitivity_points`` amounts on
    ``sensitivity_batches`` batches, the first ones, which the statistics then leave out so that the
    measurement is out of sample), or
    ``fisher`` (Kwon et al. 2022: the Fisher information of a mask on each unit for the fidelity loss, with
    targets sampled from the model's own output distribution, summed per unit). Per-group amounts are then
    allocated together (non-uniform) so that the MACs land on ``target_macs`` at the least total cost.
    ``loss``: ``kl`` (softmax outputs, classifiers) or ``mse`` (any output; masked tokens excluded).
    ``refit`` says what is refit after the removal:
    ``weights``: each consumer is refit by ridge least squares (``ridge`` x mean diagonal) with an intercept
    (its bias, or the running mean of the BatchNorm that reads it directly) that compensates the removed
    channels' mean; then ``refit_passes`` more refits use the pruned model's own inputs against the original's
    outputs, so errors of earlier layers are compensated too.
    ``scales`` (Kwon et al. 2022 "mask tuning", ``slimkit.passes.prune.rescale``): only one scale per kept
    unit (head, FFN neuron) and the consumer's bias are solved, consumer after consumer in execution order
    (inputs from the already pruned and tuned model, targets from the original, the residual stream's drift
    included), ``refit_passes`` sweeps, ridge toward scale 1. Far better posed than refitting whole matrices on
    a few thousand tokens: the refit that made MiniLM worse (embedding cosine 0.36 at 0.6 of the FLOPs).
    ``auto``: ``scales`` when every consumer is a Linear whose output is added to a residual stream and
    normalized (transformer attention-output and FFN-output projections), ``weights`` otherwise (CNNs, MLPs).
    All statistics are streamed (``slimkit.analysis.calibration``): memory does not grow with the number of
    batches. With ``weights``, a group whose consumer saw fewer calibration rows than ``min_rows_per_input``
    times its inputs (a classifier after global pooling: one row per image) is kept whole: its refit would be
    underdetermined and its cost would look free.
    """

    kind: ClassVar[str] = "prune"
    handler_module: ClassVar[str] = "slimkit.passes.prune.posttrain"
    renamed: ClassVar[dict[str, str]] = {"protected": "skip"}
    method: Literal["posttrain"] = "posttrain"
    target_macs: float | None = Field(None, gt=0, le=1, description="fraction of the original MACs to keep")
    ratio: float | None = Field(None, ge=0, lt=1,
                                description="instead of target_macs: fraction of each reconstructable group")
    criterion: Literal["reconstruction", "fisher"] = "reconstruction"
    loss: Literal["mse", "kl"] = "mse"
    round_to: int = Field(1, ge=1, le=1024, description="kept channel counts are multiples of this")
    max_group_ratio: float = Field(0.9, gt=0, lt=1)
    skip: list[str] = skip_field("that keep their width")
    filter_fn: LayerFilterFn | None = filter_fn_field()
    calibration_batches: int | None = Field(None, ge=1, description="use at most this many calibration batches")
    sensitivity_batches: int = Field(1, ge=1, le=64)
    sensitivity_points: int = Field(2, ge=1, le=16)
    ridge: float = Field(1e-3, ge=0, lt=1)
    refit: Literal["auto", "weights", "scales"] = "auto"
    refit_passes: int = Field(2, ge=0, le=10)
    refit_order: Literal["sequential", "joint"] = Field(
        "sequential", description="refit='weights': the paired refits one consumer at a time in execution order, "
                                  "each on inputs that carry the refits before it, or all from one paired forward")
    stream_target: bool = Field(
        True, description="refit='weights': a consumer whose output (after its BatchNorm) is added to a residual "
                          "stream is refit to the original output plus the original stream minus the pruned "
                          "model's, so each block also corrects the drift that reached it")
    weight_ridge: float | None = Field(
        None, gt=0, le=100, description="refit='scales': then also refit each consumer's whole kept weight, ridge "
                                        "toward the scaled weight with this strength (x mean diagonal of the "
                                        "input covariance); None: scales and bias only")
    min_rows_per_input: float = Field(
        1.0, ge=0, le=1000, description="refit='weights': keep a group whole when its consumer saw fewer "
                                        "calibration rows than this times its inputs (a Linear after global "
                                        "pooling sees one row per image): its least-squares refit would be "
                                        "underdetermined; 0: prune it anyway")
    macs_tolerance: float = Field(0.02, gt=0, lt=0.5)
    block_refit: BlockRefitConfig | None = Field(None, description="then refit each block to the original's "
                                                                   "output on the calibration data")

    @model_validator(mode="after")
    def _one_target(self) -> PostTrainPruneConfig:
        if (self.target_macs is None) == (self.ratio is None):
            raise ValueError("give exactly one of target_macs or ratio")
        return self


__all__ = ["BlockRefitConfig", "PostTrainPruneConfig"]
