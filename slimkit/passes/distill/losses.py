"""Distillation losses.

``kd_loss`` is Hinton et al.'s loss: ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_t || p_s)`` with
``p = softmax(logits / T)`` and the KL averaged over the batch (``batchmean``). Its gradient with respect to the
student logits (KL part) is exactly ``T * (p_s - p_t) / B``; for large T, ``p ≈ (1 + z/T - mean(z)/T) / K`` so the
gradient tends to ``((s - mean s) - (t - mean t)) / (K * B)``, independent of T. That is why the T^2 factor
is there: the soft and hard terms keep their relative weight whatever the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged over the batch.
    Logits may have extra leading dimensions (e.g. tokens); everything but the last axis counts as batch."""
    t = float(temperature)
    s = student_logits.float().reshape(-1, student_logits.shape[-1])
    q = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    log_ps = F.log_softmax(s / t, dim=-1)
    log_pt = F.log_softmax(q / t, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
            T: float = 4.0, alpha: float = 0.5) -> torch.Tensor:  # noqa: N803 (T is the usual name)
    """``alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    ``teacher_logits`` is treated as a constant (detached). With ``targets=None`` (unlabelled data) only the
    soft term is used, at full weight.
    """
    soft = soft_kl(student_logits, teacher_logits.detach(), T)
    if targets is None:
        return soft
    if alpha == 0.0:
        return soft
    hard = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), targets.reshape(-1))
    if alpha == 1.0:
        return hard
    return alpha * hard + (1.0 - alpha) * soft


def feature_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between two feature tensors of the same shape: ``mse`` (mean squared error) or ``cosine``
    (1 - cosine similarity of each sample's flattened features, averaged over the batch)."""
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"feature shapes differ: student {tuple(student_feat.shape)} vs teacher "
                         f"{tuple(teacher_feat.shape)}")
    s = student_feat.float()
    t = teacher_feat.detach().float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1, eps=1e-8)).mean()
    raise ValueError(f"unknown feature loss {kind!r}; expected 'mse' or 'cosine'")


def mutual_losses(logits_a: torch.Tensor, logits_b: torch.Tensor, targets: torch.Tensor | None,
                  T: float = 1.0, alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
    """Deep mutual learning: each peer's :func:`kd_loss` against the other's (detached) outputs.
    Their sum can be minimized in one backward pass, since no gradient crosses between the peers."""
    return kd_loss(logits_a, logits_b.detach(), targets, T, alpha), kd_loss(logits_b, logits_a.detach(), targets,
                                                                             T, alpha)
