"""The distillation objective as pure functions: testable without a trainer, float32 whatever the input dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_enhance.objectives.settings import DIVERGENCE_KINDS, DivergenceKind, LossSettings

__all__ = ["DIVERGENCE_KINDS", "DistillationOutput", "DivergenceKind", "distillation_loss", "divergence"]


@dataclass
class DistillationOutput:
    """What `distillation_loss` returns.

    `loss` = alpha * kd_loss + (1 - alpha) * ce_loss; `kd_loss` already carries the T² factor; `ce_loss` is None
    when no labels were given; `num_tokens` counts the positions that entered both terms.
    """

    loss: torch.Tensor
    kd_loss: torch.Tensor
    ce_loss: torch.Tensor | None
    num_tokens: torch.Tensor


def check_label_ids(labels: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    """Refuse float labels and ids outside [0, num_classes): CE would fail deep inside torch (on GPU, a device assert)."""
    if labels.is_floating_point():
        raise ValueError(
            f"{what} are {labels.dtype}, but the label term needs integer class or token ids. Convert them "
            "(labels.long()) or, for soft targets, distil with alpha=1.0 and no labels."
        )
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{what} hold id {bad}, outside [0, {num_classes}) of the {num_classes} logits. Check that the labels "
            "come from this tokenizer or label set, and mark positions to skip with ignore_index (-100)."
        )


def divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence between two log-distributions over the last dimension.

    - ``forward_kl``: KL(teacher ‖ student), mean-seeking (Hinton et al. 2015).
    - ``reverse_kl``: KL(student ‖ teacher), mode-seeking.
    - ``jsd``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024),
      beta * KL(teacher ‖ M) + (1 - beta) * KL(student ‖ M) with M = beta * p_teacher + (1 - beta) * p_student.
      As in TRL's GKDTrainer, ``beta = 0`` is taken to mean forward KL and ``beta = 1`` reverse KL (the
      formula itself vanishes at both ends); ``beta = 0.5`` is the symmetric JSD.
    """
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    # A probability of exactly 0 (a -inf logit: a forbidden token or class) contributes 0 · log 0 = 0. Floored at
    # the lowest finite float, exp() of it is still 0 and the product 0 · (finite) is 0 where kl_div's own
    # 0 · (-inf) would be NaN. A token the student allows and the teacher forbids keeps reverse KL huge, as it
    # is (+inf exactly).
    floor = torch.finfo(student_log_probs.dtype).min
    student_log_probs = student_log_probs.clamp(min=floor)
    teacher_log_probs = teacher_log_probs.clamp(min=floor)
    if kind == "forward_kl":
        return F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    if kind == "reverse_kl":
        return F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True).sum(-1)
    mixture = torch.logsumexp(
        torch.stack([teacher_log_probs + math.log(beta), student_log_probs + math.log1p(-beta)]), dim=0
    )
    kl_teacher = F.kl_div(mixture, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mixture, student_log_probs, reduction="none", log_target=True).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
) -> DistillationOutput:
    """alpha · T² · D(p_T(teacher), p_T(student)) + (1 − alpha) · CE(student, labels).

    Args:
        student_logits: ``[..., C]`` logits of the student.
        teacher_logits: ``[..., C]`` logits of the teacher, same shape (no gradient flows into them).
        labels: ``[...]`` class ids aligned with the logits (no shifting happens here). Positions equal to
            ``ignore_index`` are excluded from both terms. ``None``: pure distillation over every position.
        alpha: weight of the distillation term, in [0, 1].
        temperature: softening temperature T > 0 for the distillation term; CE always uses T = 1.
        kind: ``"forward_kl"`` (default), ``"reverse_kl"`` or ``"jsd"`` (see `divergence`).
        beta: JSD interpolation; 0 = forward KL end, 1 = reverse KL end.
        ignore_index: label value that marks a position to skip.

    Both terms are means over the kept positions, computed in float32 with log-softmax. When every position is
    masked the loss is 0 and still connected to the graph (no NaN).
    """
    LossSettings(alpha, temperature, kind, beta, ignore_index)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; both must be [..., C] over the same classes or vocabulary. Align them (e.g. slice "
            "padded vocabulary columns, shift causal LM logits the same way) before calling distillation_loss."
        )
    num_classes = student_logits.shape[-1]
    student = student_logits.reshape(-1, num_classes)
    teacher = teacher_logits.detach().reshape(-1, num_classes)
    if labels is not None:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match the logits' leading dims "
                f"{tuple(student_logits.shape[:-1])}. Pass labels aligned with the logits (for causal LMs: "
                "logits[:, :-1] against labels[:, 1:])."
            )
        flat_labels = labels.reshape(-1)
        keep = flat_labels != ignore_index
        check_label_ids(flat_labels[keep], num_classes)
        student, teacher, flat_labels = student[keep], teacher[keep], flat_labels[keep]
    student = student.float()
    num_tokens = torch.tensor(student.shape[0], device=student.device)
    denominator = num_tokens.clamp(min=1)

    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher.float() / temperature, dim=-1)
    kd = divergence(student_log_probs, teacher_log_probs, kind, beta).sum() / denominator
    kd = kd * temperature**2
    if labels is None:
        return DistillationOutput(loss=kd, kd_loss=kd, ce_loss=None, num_tokens=num_tokens)
    ce = F.cross_entropy(student, flat_labels, reduction="sum") / denominator
    return DistillationOutput(
        loss=alpha * kd + (1.0 - alpha) * ce, kd_loss=kd, ce_loss=ce, num_tokens=num_tokens
    )
