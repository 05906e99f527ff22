"""Distillation against a sparse teacher: its top-k log-probabilities plus one bucket for the remaining mass.

An offline teacher cache (`cache_teacher_logits`) keeps, per token, the teacher's ``k`` most likely token ids,
their log-probabilities at T = 1 and the log of the probability mass left over. `sparse_distillation_loss`
compares the student with that summary on the ``k + 1`` outcomes "token i" (for each cached id) and "any other
token":

1. Both distributions are coarse-grained at T = 1: the teacher's (k + 1)-way distribution is exactly what was
   cached; the student's is ``log q(i)`` for the cached ids and ``log(1 - sum_i q(i))`` for the bucket, computed
   exactly from its full logits (``logsumexp`` over the other ids).
2. Temperature is then applied to those (k + 1)-way distributions: ``p_T ∝ p^(1/T)`` over the k + 1 outcomes
   on both sides (`distillation_loss` on the coarse log-probabilities), so teacher and student are treated
   alike, and the minimiser is still "student = teacher" on the k + 1 outcomes.
3. ``kd_loss = T² · D(p_T ‖ q_T)`` for the chosen divergence, averaged over positions; ``ce_loss`` is the usual
   cross-entropy of the student's *full* logits with the labels.

This equals `distillation_loss` on the full logits when the ids cover the whole vocabulary (k = V). For k < V it
is the divergence between the two coarse-grained distributions, which never exceeds the full one at T = 1 (data
processing) and ignores how either model spreads the bucket's mass over the other tokens. With T ≠ 1 it is not
the divergence of the tempered full distributions either: the teacher's tempered tail ``sum_j p(j)^(1/T)`` over
the bucket is unknown from the cache, so the bucket is tempered as one outcome on both sides.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from hf_enhance.objectives.losses import (
    DistillationOutput,
    DivergenceKind,
    check_label_ids,
    distillation_loss,
)
from hf_enhance.objectives.settings import LossSettings

# Log-mass used for an empty bucket (teacher mass that rounds to 0): exp() of it is 0 in float32 at any
# temperature, yet it stays finite so that 0 · log 0 terms evaluate to 0 and not NaN.
_EMPTY_BUCKET_LOGPROB = -1e4


def sparse_distillation_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    residual_logprob: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
) -> DistillationOutput:
    """alpha · T² · D(teacher top-k + bucket, student top-k + bucket) + (1 − alpha) · CE(student, labels).

    Args:
        student_logits: ``[..., V]`` full logits of the student.
        topk_ids: ``[..., k]`` distinct vocabulary ids the teacher kept per position (any integer dtype).
        topk_logprobs: ``[..., k]`` the teacher's log-probabilities of those ids at temperature 1.
        residual_logprob: ``[...]`` log of the teacher's probability mass outside the k ids. ``None``: derived
            as ``log(1 − sum(exp(topk_logprobs)))``, which loses precision when that mass is tiny; the cache
            stores it exactly.
        labels: ``[...]`` ids aligned with the logits, ``ignore_index`` to skip a position (in both terms);
            ``None`` for pure distillation with no label term.
        alpha, temperature, kind, beta, ignore_index: as in `distillation_loss`.
        mask: ``[...]`` bool, False to skip a position in both terms (e.g. where the cache has no entry);
            combined with ``labels != ignore_index``. ``None``: every position (with a label) counts.

    See the module docstring for what is computed exactly and what is approximated when k < V. Skipped positions
    are masked, not cut out, so the logits are never copied (pass them unshifted, with the cache entries and
    labels aligned to them, as `DistillationTrainer` does), and the gradient with respect to them is written in
    closed form: the objective costs about what the student's own cross-entropy costs.
    """
    LossSettings(alpha, temperature, kind, beta, ignore_index)
    _check_shapes(student_logits, topk_ids, topk_logprobs, residual_logprob, labels, mask)
    vocab_size, top_k = student_logits.shape[-1], topk_ids.shape[-1]
    student = student_logits.reshape(-1, vocab_size)
    ids = topk_ids.reshape(-1, top_k).long()
    teacher = topk_logprobs.detach().reshape(-1, top_k).float()
    keep = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
    if mask is not None:
        keep &= mask.reshape(-1)
    flat_labels = None
    if labels is not None:
        flat_labels = labels.reshape(-1)
        keep &= flat_labels != ignore_index
        flat_labels = flat_labels.masked_fill(~keep, 0)
    _check_teacher_mass(teacher[keep], residual_logprob, keep)
    kept_ids = ids[keep]
    if kept_ids.numel() and (int(kept_ids.min()) < 0 or int(kept_ids.max()) >= vocab_size):
        raise ValueError(
            f"topk_ids hold ids outside [0, {vocab_size}) of the student's {vocab_size} logits (range "
            f"{int(kept_ids.min())}..{int(kept_ids.max())}). The cache was built with another tokenizer or "
            "vocabulary: rebuild it with the student's tokenizer."
        )
    if flat_labels is not None:
        check_label_ids(flat_labels[keep], vocab_size)
    student_coarse, label_log_probs = _CoarseLogProbs.apply(student, ids, flat_labels)
    teacher_coarse = teacher
    if top_k < vocab_size:
        residual = residual_logprob
        if residual is None:
            residual = torch.log(-torch.expm1(torch.logsumexp(teacher, dim=-1)))
        residual = residual.detach().reshape(-1).float()
        residual = residual.nan_to_num(nan=_EMPTY_BUCKET_LOGPROB).clamp(min=_EMPTY_BUCKET_LOGPROB)
        teacher_coarse = torch.cat([teacher, residual.unsqueeze(-1)], dim=-1)
    kd = distillation_loss(
        student_coarse[keep], teacher_coarse[keep], temperature=temperature, kind=kind, beta=beta
    ).kd_loss
    num_tokens = keep.sum()
    if flat_labels is None:
        return DistillationOutput(loss=kd, kd_loss=kd, ce_loss=None, num_tokens=num_tokens)
    ce = -label_log_probs[keep].sum() / num_tokens.clamp(min=1)
    return DistillationOutput(
        loss=alpha * kd + (1.0 - alpha) * ce, kd_loss=kd, ce_loss=ce, num_tokens=num_tokens
    )


class _CoarseLogProbs(torch.autograd.Function):
    """``[N, V]`` logits -> the student's (k + 1)-way log-probabilities and the log-probabilities of the labels.

    Outputs ``log q(id_i)`` for the k ids, ``log(1 - sum_i q(id_i))`` for the bucket (left out when k = V) and
    ``log q(label)``, with ``q = softmax(logits)`` in float32. Forward makes three passes over the logits (max,
    exp into one buffer, one sum whose buffer has the ids zeroed, so the bucket's mass is an exact sum of
    positives, not ``1 - sum``); backward one more. With g the incoming gradients and G their total per row,
    ``d/dz_j = g_i [j = id_i] + g_bucket q_j / q_bucket [j not an id] + g_label [j = label] - q_j G``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits32 = logits.float()
        row_max = logits32.amax(dim=-1, keepdim=True)
        shifted = torch.sub(logits32, row_max).exp_()
        id_mass = shifted.gather(1, ids)
        rest = shifted.scatter_(1, ids, 0.0).sum(dim=-1, keepdim=True)
        total = rest + id_mass.sum(dim=-1, keepdim=True)
        log_norm = row_max + total.log()
        coarse = logits32.gather(1, ids) - log_norm
        if ids.shape[1] < logits.shape[1]:
            coarse = torch.cat([coarse, rest.log() - total.log()], dim=-1)
        label_log_probs = None if labels is None else (logits32.gather(1, labels[:, None]) - log_norm)[:, 0]
        ctx.save_for_backward(shifted, id_mass, rest, total, ids, labels)
        ctx.logits_dtype = logits.dtype
        return coarse, label_log_probs

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_coarse: torch.Tensor, grad_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        shifted, id_mass, rest, total, ids, labels = ctx.saved_tensors
        top_k = ids.shape[1]
        row_total = grad_coarse.sum(dim=-1, keepdim=True)
        if labels is not None and grad_labels is not None:
            row_total = row_total + grad_labels[:, None]
        # Off the ids: q_j (g_bucket / q_bucket - G) = shifted_j (g_bucket / rest - G / total).
        scale = -row_total / total
        if grad_coarse.shape[1] > top_k:
            scale = scale + torch.where(rest > 0, grad_coarse[:, top_k:] / rest, 0.0)
        grad = shifted.mul_(scale)
        grad.scatter_(1, ids, grad_coarse[:, :top_k] - id_mass * (row_total / total))
        if labels is not None and grad_labels is not None:
            grad.scatter_add_(1, labels[:, None], grad_labels[:, None])
        return grad.to(ctx.logits_dtype), None, None


# Rounding slack of stored log-probabilities (the cache keeps them in float16).
_MASS_TOLERANCE = 1e-2


def _check_teacher_mass(teacher: torch.Tensor, residual: torch.Tensor | None, keep: torch.Tensor) -> None:
    """Refuse top-k values that are not log-probabilities: NaN, above 0, or more than all the mass together."""
    if teacher.numel() == 0:
        return
    if teacher.isnan().any():
        raise ValueError(
            "topk_logprobs holds NaN at positions that count: the cached teacher entries are corrupt. Rebuild "
            "the cache (cache_teacher_logits with overwrite=True) or mask those positions out."
        )
    if (teacher > _MASS_TOLERANCE).any():
        raise ValueError(
            f"topk_logprobs holds values up to {teacher.max().item():.4g}, but log-probabilities are at most 0 "
            "(probability 1): these look like raw logits. Pass torch.log_softmax(teacher_logits, -1) gathered "
            "at the ids, as cache_teacher_logits stores them."
        )
    mass = teacher.exp().sum(-1)
    if residual is not None:
        mass = mass + residual.detach().reshape(-1)[keep].float().exp().nan_to_num(nan=0.0)
    if (mass > 1.0 + _MASS_TOLERANCE).any():
        raise ValueError(
            f"The teacher's top-k probabilities (plus the residual) sum to up to {mass.max().item():.4g} at a "
            "position, more than 1: they are not log-probabilities of one distribution. Pass log_softmax values "
            "computed at temperature 1 over the whole vocabulary, and residual_logprob = log(1 - their sum)."
        )


def _check_shapes(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    residual_logprob: torch.Tensor | None,
    labels: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> None:
    positions = tuple(student_logits.shape[:-1])
    if topk_ids.shape != topk_logprobs.shape or tuple(topk_ids.shape[:-1]) != positions:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} must both be "
            f"[..., k] over the student's positions {positions}. Pass the cached teacher entries collated with "
            "the same batch (TeacherCacheCollator) and shifted like the logits."
        )
    if topk_ids.shape[-1] > student_logits.shape[-1] or topk_ids.shape[-1] < 1:
        raise ValueError(
            f"k={topk_ids.shape[-1]} teacher entries per position but the student has "
            f"{student_logits.shape[-1]} logits: k must be between 1 and the vocabulary size. Check that the "
            "cache was built with this tokenizer and that the student logits are not sliced."
        )
    if topk_ids.is_floating_point():
        raise ValueError(f"topk_ids must be integer token ids, got {topk_ids.dtype}.")
    if residual_logprob is not None and tuple(residual_logprob.shape) != positions:
        raise ValueError(
            f"residual_logprob {tuple(residual_logprob.shape)} must have one entry per position {positions}."
        )
    if labels is not None and tuple(labels.shape) != positions:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match the logits' leading dims {positions}. Pass labels "
            "aligned with the logits (for causal LMs: logits[:, :-1] against labels[:, 1:])."
        )
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != positions):
        raise ValueError(
            f"mask must be a bool tensor with one entry per position {positions}, got {mask.dtype} "
            f"{tuple(mask.shape)}. Pass True where the position counts (e.g. the cache's teacher_cache_mask)."
        )
