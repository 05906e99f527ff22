"""The top-k + bucket objective: exact at k = V, and the documented coarse-grained divergence below that."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_enhance import distillation_loss, sparse_distillation_loss

V = 23


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
    values, ids = log_probs.topk(k, dim=-1)
    residual = torch.logsumexp(log_probs.scatter(-1, ids, -math.inf), dim=-1)
    return ids, values, residual


def coarse_reference(student, teacher, ids, k, temperature, kind, beta=0.5):
    """numpy float64: (k+1)-way distributions at T = 1, tempered as (k+1)-way distributions, T² · mean D."""

    def coarse(logits):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top = np.take_along_axis(p, ids, -1)
        return np.concatenate([top, 1 - top.sum(-1, keepdims=True)], -1)

    def temper(p):
        q = p ** (1 / temperature)
        return q / q.sum(-1, keepdims=True)

    ps = temper(coarse(student.double().numpy()))
    pt = temper(coarse(teacher.double().numpy()))
    kl = lambda a, b: (a * (np.log(a) - np.log(b))).sum(-1)  # noqa: E731
    if kind == "forward_kl":
        d = kl(pt, ps)
    elif kind == "reverse_kl":
        d = kl(ps, pt)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    return temperature**2 * d.mean()


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 1.0), (3.0, 0.2)])
def test_full_support_equals_distillation_loss(
    kind: str, beta: float, temperature: float, alpha: float
) -> None:
    student = (torch.randn(3, 6, V) * 3).requires_grad_()
    teacher = torch.randn(3, 6, V) * 3
    labels = torch.randint(0, V, (3, 6))
    labels[1, :4] = -100
    settings = {"alpha": alpha, "temperature": temperature, "kind": kind, "beta": beta}
    expected = distillation_loss(student, teacher, labels, **settings)
    ids, logprobs, residual = teacher_topk(teacher, V)
    out = sparse_distillation_loss(student, ids, logprobs, residual, labels, **settings)
    for name in ("loss", "kd_loss", "ce_loss"):
        assert getattr(out, name).item() == pytest.approx(getattr(expected, name).item(), rel=1e-5, abs=1e-7)
    assert out.num_tokens.item() == expected.num_tokens.item() == 14
    (grad,) = torch.autograd.grad(out.loss, student)
    (expected_grad,) = torch.autograd.grad(expected.loss, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_top_k_is_the_divergence_of_the_coarse_grained_distributions(kind: str, temperature: float) -> None:
    student, teacher = torch.randn(10, V) * 2, torch.randn(10, V) * 2
    ids, logprobs, residual = teacher_topk(teacher, 5)
    out = sparse_distillation_loss(student, ids, logprobs, residual, temperature=temperature, kind=kind)
    expected = coarse_reference(student, teacher, ids.numpy(), 5, temperature, kind)
    assert out.kd_loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.ce_loss is None


def test_coarse_divergence_is_below_the_full_one_at_temperature_one() -> None:
    student, teacher = torch.randn(50, V) * 2, torch.randn(50, V) * 2
    ids, logprobs, residual = teacher_topk(teacher, 4)
    sparse = sparse_distillation_loss(student, ids, logprobs, residual, temperature=1.0).kd_loss
    full = distillation_loss(student, teacher, temperature=1.0).kd_loss
    assert 0 < sparse.item() < full.item()


def autograd_reference(student, ids, logprobs, residual, labels, keep, **settings):
    """The objective spelled out with autograd in float64: rows cut out, bucket from a masked logsumexp."""
    rows = keep.reshape(-1)
    student = student.double().reshape(-1, V)[rows]
    ids, logprobs = ids.reshape(-1, ids.shape[-1])[rows], logprobs.double().reshape(-1, ids.shape[-1])[rows]
    log_norm = torch.logsumexp(student, -1, keepdim=True)
    rest = torch.logsumexp(student.scatter(-1, ids, -math.inf), -1, keepdim=True)
    coarse = torch.cat([student.gather(-1, ids), rest], -1) - log_norm
    teacher = torch.cat([logprobs, residual.double().reshape(-1, 1)[rows]], -1)
    out = distillation_loss(coarse, teacher, labels=None, **{**settings, "alpha": 1.0})
    ce = torch.nn.functional.cross_entropy(student, labels.reshape(-1)[rows])
    return settings["alpha"] * out.kd_loss + (1 - settings["alpha"]) * ce


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.2), (1.5, 1.0)])
def test_top_k_gradients_match_autograd_with_masked_positions(
    kind: str, beta: float, temperature: float, alpha: float
) -> None:
    torch.manual_seed(0)
    student = (torch.randn(2, 7, V) * 3).requires_grad_()
    ids, logprobs, residual = teacher_topk(torch.randn(2, 7, V) * 3, 5)
    labels = torch.randint(0, V, (2, 7))
    labels[0, :2] = -100
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, -1] = False
    settings = {"alpha": alpha, "temperature": temperature, "kind": kind, "beta": beta}
    out = sparse_distillation_loss(student, ids, logprobs, residual, labels, mask=mask, **settings)
    expected = autograd_reference(
        student, ids, logprobs, residual, labels, mask & (labels != -100), **settings
    )
    assert out.num_tokens.item() == 11
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out.loss, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    assert not grad[0, :2].any() and not grad[1, -1].any()
    torch.testing.assert_close(grad, expected_grad.float(), rtol=1e-4, atol=1e-6)


def test_bfloat16_logits_get_bfloat16_gradients_of_the_float32_objective() -> None:
    student = torch.randn(6, V).bfloat16().requires_grad_()
    ids, logprobs, residual = teacher_topk(torch.randn(6, V), 4)
    labels = torch.randint(0, V, (6,))
    out = sparse_distillation_loss(student, ids, logprobs, residual, labels)
    (grad,) = torch.autograd.grad(out.loss, student)
    reference = student.detach().float().requires_grad_()
    expected = sparse_distillation_loss(reference, ids, logprobs, residual, labels)
    (expected_grad,) = torch.autograd.grad(expected.loss, reference)
    assert grad.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-2, atol=1e-4)


def test_residual_derived_from_the_top_k_when_not_given() -> None:
    student, teacher = torch.randn(8, V), torch.randn(8, V)
    ids, logprobs, residual = teacher_topk(teacher, 6)
    given = sparse_distillation_loss(student, ids, logprobs, residual, kind="jsd")
    derived = sparse_distillation_loss(student, ids, logprobs, None, kind="jsd")
    assert derived.kd_loss.item() == pytest.approx(given.kd_loss.item(), rel=1e-4)


def test_empty_teacher_bucket_and_all_masked_stay_finite() -> None:
    student = torch.randn(4, V, requires_grad=True)
    teacher = torch.full((4, V), -200.0)
    teacher[:, :3] = 5.0
    ids, logprobs, residual = teacher_topk(teacher, 3)
    assert torch.isneginf(residual).all() or (residual < -150).all()
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        out = sparse_distillation_loss(student, ids, logprobs, torch.full((4,), -math.inf), kind=kind)
        (grad,) = torch.autograd.grad(out.loss, student)
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    masked = sparse_distillation_loss(student, ids, logprobs, residual, torch.full((4,), -100))
    (grad,) = torch.autograd.grad(masked.loss, student)
    assert masked.loss.item() == 0.0 and masked.num_tokens.item() == 0 and not grad.any()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"topk_logprobs": torch.zeros(4, 3)}, "must both be"),
        (
            {"topk_ids": torch.zeros(5, 2, dtype=torch.long), "topk_logprobs": torch.zeros(5, 2)},
            "must both be",
        ),
        (
            {"topk_ids": torch.zeros(4, V + 1, dtype=torch.long), "topk_logprobs": torch.zeros(4, V + 1)},
            "k must",
        ),
        ({"topk_ids": torch.zeros(4, 2)}, "integer token ids"),
        ({"residual_logprob": torch.zeros(5)}, "one entry per position"),
        ({"labels": torch.zeros(4, 1, dtype=torch.long)}, "do not match"),
        ({"mask": torch.ones(4)}, "mask must be a bool"),
        ({"mask": torch.ones(5, dtype=torch.bool)}, "mask must be a bool"),
    ],
)
def test_bad_inputs_raise_clear_errors(change: dict, message: str) -> None:
    inputs = {
        "student_logits": torch.randn(4, V),
        "topk_ids": torch.zeros(4, 2, dtype=torch.long),
        "topk_logprobs": torch.zeros(4, 2),
        "residual_logprob": torch.zeros(4),
        "labels": None,
    }
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        sparse_distillation_loss(**inputs)
    with pytest.raises(ValueError, match="temperature"):
        sparse_distillation_loss(torch.randn(4, V), *teacher_topk(torch.randn(4, V), 2), temperature=0.0)


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda logprobs, residual: (logprobs.abs() + 0.5, residual), "look like raw logits"),
        (lambda logprobs, residual: (logprobs.clamp(min=-0.1), residual), "more than 1"),
        (lambda logprobs, residual: (logprobs, residual.clamp(min=-0.01)), "more than 1"),
        (lambda logprobs, residual: (logprobs.index_fill(0, torch.tensor([2]), math.nan), residual), "NaN"),
    ],
)
def test_values_that_are_not_log_probabilities_are_refused(corrupt, message: str) -> None:
    ids, logprobs, residual = teacher_topk(torch.randn(4, V) * 3, 3)
    logprobs, residual = corrupt(logprobs, residual)
    with pytest.raises(ValueError, match=message):
        sparse_distillation_loss(torch.randn(4, V), ids, logprobs, residual)
    # the same values at a masked position do not count (collators pad positions without an entry)
    mask = torch.ones(4, dtype=torch.bool)
    ids, good, good_residual = teacher_topk(torch.randn(4, V), 3)
    bad_logprobs, bad_residual = corrupt(good, good_residual)
    mixed = torch.cat([good[:2], bad_logprobs[2:3], good[3:]])
    mixed_residual = torch.cat([good_residual[:2], bad_residual[2:3], good_residual[3:]])
    mask[2] = False
    out = sparse_distillation_loss(torch.randn(4, V), ids, mixed, mixed_residual, mask=mask)
    assert math.isfinite(out.loss.item())


def test_top_k_ids_outside_the_vocabulary_are_refused() -> None:
    ids, logprobs, residual = teacher_topk(torch.randn(4, V), 2)
    with pytest.raises(
        ValueError, match=r"topk_ids hold ids outside \[0, .*rebuild it with the student's tokenizer"
    ):
        sparse_distillation_loss(torch.randn(4, V), ids + V, logprobs, residual)
    with pytest.raises(ValueError, match="outside"):
        sparse_distillation_loss(
            torch.randn(4, V), ids, logprobs, residual, labels=torch.tensor([0, 1, 2, V])
        )
