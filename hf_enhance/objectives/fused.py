"""The distillation objective fused with both output heads, chunked over tokens: no ``[N, V]`` tensor is held whole.

`fused_distillation_loss` takes the final hidden states and the LM-head weights of the student and the teacher
instead of their logits. It walks over the kept tokens ``chunk_size`` at a time; for each chunk it computes the
student and teacher logits, the divergence and the label term, and the gradient of both with respect to the
chunk's student logits in closed form (`_divergence_and_grad`): a handful of in-place passes over the
``[chunk, V]`` buffers instead of an autograd graph of log-softmax, logsumexp and kl_div that holds a dozen of
them. The chunk's logit gradient is folded straight into the gradients of the student's hidden states, head
weight and bias, which are kept until backward (the scheme of Liger-Kernel's fused linear cross-entropy).
Backward then only scales them by the incoming gradient: no recomputation, and memory is bounded by a few
``[chunk_size, V]`` float32 buffers plus one ``[V, H]`` float32 gradient accumulator. `distillation_loss`, the
autograd implementation of the same objective, is the reference the tests hold this one to.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from hf_enhance.objectives.losses import (
    DistillationOutput,
    DivergenceKind,
    check_label_ids,
)
from hf_enhance.objectives.settings import LossSettings
from hf_enhance.objectives.vocab import Vocabulary

CHUNK_ELEMENTS = 2**23
"""Logit entries per ``[chunk, V]`` float32 buffer (32 MiB) that `default_chunk_size` aims for. From
benchmarks/results/kd_loss_memory.md (CPU, H = 576, N = 2048, forward + backward): at V = 49152, 128 tokens
(this rule's choice) was the fastest chunk (0.63x naive wall; 64: 0.71x, 256: 0.70x, 1024: 0.64x; 32: 0.89x)
while memory grows with the chunk (128: 0.07x the naive peak, 256: 0.11x, 1024: 0.33x); at V = 8192 every chunk
from 128 to 1024 tokens runs at 0.54-0.64x naive."""

CUDA_CHUNK_ELEMENTS = 2**27
"""`CHUNK_ELEMENTS` on a CUDA device (512 MiB per buffer). From benchmarks/results/kd_loss_memory_gpu.md (one H200,
bfloat16, H = 4096, N = 16384, V = 128256, forward + backward): every chunk costs the same fixed launches, so small
chunks are slow there (64 tokens: 3.9x the naive time, 256: 1.5x, 512: 1.2x, 1024: 1.0x, 4096: 0.91x) while the
peak stays far under naive's 68 GiB (1024 tokens: 5.2 GiB, 0.077x; 4096: 14 GiB)."""

MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 32, 1024


def default_chunk_size(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Tokens per chunk when none is given: the largest power of two with ``chunk * vocab_size`` at most
    `CHUNK_ELEMENTS` (`CUDA_CHUNK_ELEMENTS` on a CUDA ``device``), kept within [32, 1024]. On CPU: 128 at
    V = 49152, 1024 at V = 8192, 64 at V = 128256; on CUDA: 1024 up to V = 131072, 512 at V = 151936."""
    budget = (
        CUDA_CHUNK_ELEMENTS if device is not None and torch.device(device).type == "cuda" else CHUNK_ELEMENTS
    )
    rows = max(budget // max(vocab_size, 1), 1)
    return min(max(1 << (rows.bit_length() - 1), MIN_CHUNK_SIZE), MAX_CHUNK_SIZE)


def fused_distillation_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    chunk_size: int | None = None,
    ignore_index: int = -100,
) -> DistillationOutput:
    """`distillation_loss` on ``hidden @ head_weight.T (+ bias)`` of both models, without materialising the logits.

    Args:
        student_hidden: ``[..., H_s]`` final hidden states of the student (what its LM head consumes).
        student_head_weight: ``[V, H_s]`` the student's output projection (e.g. ``lm_head.weight``).
        teacher_hidden: ``[..., H_t]`` teacher hidden states with the same leading dims; no gradient flows in.
        teacher_head_weight: ``[V, H_t]`` the teacher's output projection; no gradient flows in. ``V`` must equal
            the student's: slice padded vocabulary rows (``weight[:V]``) before calling.
        labels: ``[...]`` ids aligned with the hidden states (no shifting happens here: for causal LMs pass
            ``hidden[:, :-1]`` with ``labels[:, 1:]``). ``ignore_index`` positions are skipped in both terms;
            ``None`` distils every position with no label term.
        student_head_bias, teacher_head_bias: optional ``[V]`` biases of the heads.
        alpha, temperature, kind, beta, ignore_index: as in `distillation_loss`.
        chunk_size: tokens per chunk; peak extra memory grows with ``chunk_size * V`` (a few float32
            ``[chunk_size, V]`` buffers). None: `default_chunk_size(V)`, 32 MiB per buffer.

    Returns:
        A `DistillationOutput` with the same values as `distillation_loss` on the materialised logits. Only
        ``loss`` carries gradients (to the student's hidden states, head weight and bias, in their dtypes);
        ``kd_loss`` and ``ce_loss`` are detached values for logging. For the gradient of the KD term alone, call
        with ``alpha=1.0``. The logits are computed in the inputs' dtype and the objective in float32, exactly as
        when a bf16 model's logits are passed to `distillation_loss`. Backward may run once per call.
    """
    LossSettings(alpha, temperature, kind, beta, ignore_index)
    check_fused_inputs(
        student_hidden,
        student_head_weight,
        student_head_bias,
        teacher_hidden,
        teacher_head_weight,
        teacher_head_bias,
        labels,
        chunk_size,
    )
    vocab_size = student_head_weight.shape[0]
    if labels is not None:
        check_label_ids(labels[labels != ignore_index], vocab_size)
    return fused_objective(
        (student_hidden, student_head_weight, student_head_bias),
        (teacher_hidden, teacher_head_weight, teacher_head_bias),
        labels,
        Vocabulary(),
        alpha=alpha,
        temperature=temperature,
        kind=kind,
        beta=beta,
        chunk_size=default_chunk_size(vocab_size, student_hidden.device)
        if chunk_size is None
        else chunk_size,
        ignore_index=ignore_index,
    )


def fused_objective(
    student: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    labels: torch.Tensor | None,
    vocab: Vocabulary,
    **settings: Any,
) -> DistillationOutput:
    """The checked-inputs body of `fused_distillation_loss`: ``(hidden, head weight, head bias)`` per model, over
    the columns `vocab` says this process holds (all of them, or one rank's slice of a vocabulary-parallel head)."""
    student_hidden, student_weight, student_bias = student
    teacher_hidden, teacher_weight, teacher_bias = teacher
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, student_weight, student_bias)
    )
    loss, kd, ce, num_tokens = _FusedDistillation.apply(
        student_hidden.reshape(-1, student_hidden.shape[-1]),
        student_weight,
        student_bias,
        teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]),
        teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        None if labels is None else labels.reshape(-1),
        {**settings, "needs_grad": needs_grad, "vocab": vocab},
    )
    return DistillationOutput(
        loss=loss, kd_loss=kd, ce_loss=None if labels is None else ce, num_tokens=num_tokens
    )


class _FusedDistillation(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        student_bias: torch.Tensor | None,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        teacher_bias: torch.Tensor | None,
        labels: torch.Tensor | None,
        settings: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        device, full_shape = student_hidden.device, student_hidden.shape
        vocab = settings["vocab"]
        rows = None
        if labels is not None:
            # Gather the kept rows once; the chunks are then views of these small [tokens, H] tensors.
            rows = (labels != settings["ignore_index"]).nonzero().squeeze(1)
            student_hidden, teacher_hidden, labels = (
                t.index_select(0, rows) for t in (student_hidden, teacher_hidden, labels)
            )
        # Vocabulary-parallel: every rank runs all ranks' tokens on its own columns; `own` are this rank's rows.
        student_hidden, own = vocab.gather_rows(student_hidden)
        teacher_hidden = vocab.gather_rows(teacher_hidden)[0]
        labels = None if labels is None else vocab.gather_rows(labels)[0]
        num_tokens = student_hidden.shape[0]
        denominator = max(num_tokens, 1)
        grads = None
        if settings["needs_grad"]:
            grads = (
                torch.zeros_like(student_hidden),
                torch.zeros_like(student_weight, dtype=torch.float32),
                None if student_bias is None else torch.zeros_like(student_bias, dtype=torch.float32),
            )
        scale = torch.tensor(1.0 / denominator, device=device)
        sums = torch.zeros(3, device=device)
        heads = (student_weight, student_bias, teacher_weight, teacher_bias)
        for start in range(0, num_tokens, settings["chunk_size"]):
            chunk = slice(start, start + settings["chunk_size"])
            sums += _chunk(
                student_hidden[chunk],
                teacher_hidden[chunk],
                None if labels is None else labels[chunk],
                heads,
                settings,
                scale,
                None if grads is None else (grads[0][chunk], *grads[1:]),
            )
        if grads is not None:
            grad_hidden = vocab.sum_rows(grads[0], own)
            if rows is not None:
                grad_hidden = grad_hidden.new_zeros(full_shape).index_copy_(0, rows, grad_hidden)
            grads = (grad_hidden, *grads[1:])
        loss, kd, ce = (total.clone() for total in sums / denominator)
        ctx.grads = grads
        ctx.dtypes = (student_weight.dtype, None if student_bias is None else student_bias.dtype)
        ctx.mark_non_differentiable(kd, ce)
        return loss, kd, ce, torch.tensor(num_tokens, device=device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "fused_distillation_loss: backward ran a second time over the same loss. The fused objective "
                "computes its gradients once, in forward, and hands them over on the first backward. Call "
                "fused_distillation_loss again for a second backward pass (retain_graph is not supported)."
            )
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        weight_dtype, bias_dtype = ctx.dtypes
        grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        grad_weight = grad_weight.mul_(grad_loss).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad_loss).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _chunk(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor | None,
    heads: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None],
    settings: dict[str, Any],
    scale: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
) -> torch.Tensor:
    """Sums of loss, KD and CE over one chunk of kept rows; writes/adds the chunk's gradients into ``grads``.

    The label term's gradient is softmax minus one-hot, the divergence's comes from `_divergence_and_grad`. A
    function of its own so that the chunk's ``[rows, V]`` tensors are freed when it returns.
    """
    student_weight, student_bias, teacher_weight, teacher_bias = heads
    vocab = settings["vocab"]
    teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias).float()
    student_logits = F.linear(student_hidden, student_weight, student_bias).float()
    alpha = settings["alpha"] if labels is not None else 1.0
    chunk_labels = None if labels is None else labels.unsqueeze(1)
    kd_rows, label_log_probs, grad_logits = _divergence_and_grad(
        student_logits,
        teacher_logits,
        settings["kind"],
        settings["beta"],
        settings["temperature"],
        grad_scale=None if grads is None else scale * alpha,
        labels=chunk_labels,
        vocab=vocab,
    )
    kd = kd_rows.sum()
    ce = torch.zeros_like(kd)
    if chunk_labels is not None:
        label_logits = vocab.at(student_logits, chunk_labels)
        if label_log_probs is None:  # T != 1: the label term needs the T = 1 normaliser
            log_norm = vocab.logsumexp(student_logits)
        else:
            log_norm = label_logits - label_log_probs
        ce = (log_norm - label_logits).sum()
        if grad_logits is not None and alpha < 1.0:
            # d CE / d logits = softmax(logits) - one_hot(label).
            probs = student_logits.sub_(log_norm).exp_()
            vocab.one_hot_add(probs, chunk_labels, -1.0)
            grad_logits.addcmul_(probs, scale, value=1.0 - alpha)
    if grad_logits is not None and grads is not None:
        grad_hidden, grad_weight, grad_bias = grads
        grad_logits_w = grad_logits.to(student_weight.dtype)
        grad_hidden.copy_(grad_logits_w @ student_weight)
        if student_hidden.is_cuda and student_weight.dtype in (torch.bfloat16, torch.float16):
            # Tensor cores: this chunk's share in half precision (float32 accumulation inside the product), added
            # to the float32 total. A float32 product here was most of the step's time on an H200.
            grad_weight.add_(grad_logits_w.t() @ student_hidden)
        else:
            grad_weight.addmm_(grad_logits.t(), student_hidden.float())
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
    return torch.stack([alpha * kd + (1.0 - alpha) * ce, kd, ce])


def _divergence_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    beta: float,
    temperature: float,
    grad_scale: torch.Tensor | None,
    labels: torch.Tensor | None,
    vocab: Vocabulary,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-row T^2 * D(teacher_T, student_T) of `divergence`, and ``grad_scale`` x its gradient w.r.t. the student
    logits (None when ``grad_scale`` is None). At T = 1 also the student's log-probabilities of ``labels``
    (``[rows, 1]``), read before the buffers are reused, so the label term costs no extra pass; None otherwise.

    With s, t the student and teacher log-probabilities at temperature T and p = exp(s):
    forward KL  d/dz = (p - p_t) / T;  reverse KL  d/dz = p * (s - t - KL(p || p_t)) / T;
    JSD         d/dz = (1 - beta) * p * (s - m - KL(p || m)) / T, with m = log(beta * p_t + (1 - beta) * p).
    Both are multiplied by the T^2 factor of the objective. Reuses its buffers in place: at most five [rows, V]
    tensors live at once, and every scalar factor is folded into one multiplication. With a `ShardedVocabulary`
    the logits are this rank's columns and the row-wide terms (normalisers, divergences) are all-reduced.
    """
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    inv_t = 1.0 / temperature
    s = vocab.log_softmax(student_logits * inv_t if temperature != 1.0 else student_logits)
    t = vocab.log_softmax(teacher_logits * inv_t if temperature != 1.0 else teacher_logits)
    label_log_probs = vocab.at(s, labels) if labels is not None and temperature == 1.0 else None
    # Zero probabilities (-inf logits: masked tokens, a -inf head bias) contribute 0 · log 0 = 0: floored at the
    # lowest finite float, exp() is still 0 and 0 · (finite) stays 0 instead of NaN (as in `divergence`).
    floor = torch.finfo(s.dtype).min
    s.clamp_(min=floor)
    t.clamp_(min=floor)
    needs_grad = grad_scale is not None
    grad = None
    if kind == "forward_kl":
        p_t = t.exp()
        value = vocab.sum(torch.linalg.vecdot(p_t, t.sub_(s)))
        if needs_grad:
            grad = s.exp_().sub_(p_t).mul_(grad_scale * temperature)
    elif kind == "reverse_kl":
        p = s.exp()
        gap = s.sub_(t)
        value = vocab.sum(torch.linalg.vecdot(p, gap))
        if needs_grad:
            grad = gap.sub_(value.unsqueeze(1)).mul_(p).mul_(grad_scale * temperature)
    else:
        # The mixture in probability space from the two exps needed anyway; flooring it at the smallest normal
        # float only touches tokens whose probability is below that under both models, whose terms vanish.
        p_t, p = t.exp(), s.exp()
        mixture = p_t.mul(beta).add_(p, alpha=1.0 - beta).clamp_(min=torch.finfo(p.dtype).tiny).log_()
        gap = s.sub_(mixture)
        kl_teacher, kl_student = vocab.sum(
            torch.stack([torch.linalg.vecdot(p_t, t.sub_(mixture)), torch.linalg.vecdot(p, gap)])
        )
        value = beta * kl_teacher + (1.0 - beta) * kl_student
        if needs_grad:
            grad = gap.sub_(kl_student.unsqueeze(1)).mul_(p).mul_(grad_scale * ((1.0 - beta) * temperature))
    # T^2 of the objective, divided by T in the gradient (chain rule through logits / T).
    return value * temperature**2, label_log_probs, grad


def check_fused_inputs(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    labels: torch.Tensor | None,
    chunk_size: int | None,
) -> None:
    """Shape checks with errors that say what to pass instead (label ids are checked by the caller, which knows
    the whole vocabulary's size)."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size={chunk_size!r} must be a positive int: it is the number of tokens whose [chunk, V] "
            "logits are held at once. Leave it None for default_chunk_size(V) (32 MiB per float32 buffer); "
            "lower it to save memory."
        )
    for name, hidden, weight in (
        ("student", student_hidden, student_weight),
        ("teacher", teacher_hidden, teacher_weight),
    ):
        if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"The {name} head weight {tuple(weight.shape)} does not fit the {name} hidden states "
                f"{tuple(hidden.shape)}: expected hidden [..., H] and a head weight [V, H] (nn.Linear layout, "
                "e.g. model.lm_head.weight) with the same H."
            )
        if hidden.dtype != weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
            raise ValueError(
                f"{name}_hidden is {hidden.dtype} but {name}_head_weight is {weight.dtype}. Cast them to one "
                "dtype (the head's), or call under torch.autocast as the model's forward would run."
            )
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"Student hidden states {tuple(student_hidden.shape)} and teacher hidden states "
            f"{tuple(teacher_hidden.shape)} cover different positions; their leading dims must match (only the "
            "hidden sizes may differ). Shift or trim both the same way."
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"The student head has {student_weight.shape[0]} vocabulary rows but the teacher head has "
            f"{teacher_weight.shape[0]}. Both must predict over the same vocabulary; if the difference is "
            "embedding padding, slice both weights (and biases) to the tokenizer's size: weight[:V]."
        )
    for name, bias in (("student_head_bias", student_bias), ("teacher_head_bias", teacher_bias)):
        if bias is not None and tuple(bias.shape) != (student_weight.shape[0],):
            raise ValueError(
                f"{name} has shape {tuple(bias.shape)}, expected ({student_weight.shape[0]},): one entry per "
                "vocabulary row of the head weight."
            )
    if labels is not None and labels.shape != student_hidden.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match the hidden states' leading dims "
            f"{tuple(student_hidden.shape[:-1])}. Pass labels aligned with the hidden states (for causal LMs: "
            "hidden[:, :-1] against labels[:, 1:])."
        )
