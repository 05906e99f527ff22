"""Property-based tests (hypothesis): every path of the objective against a float64 reference.

Random shapes, label masks, temperatures, divergences, dtypes, extreme logits and forbidden (-inf) teacher
tokens. The reference uses 0 · log 0 = 0, so a forbidden token costs nothing in forward KL and JSD, and every
path must then return that finite value, with a finite gradient.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_enhance import distillation_loss, sparse_distillation_loss
from hf_enhance.objectives.fused import fused_distillation_loss

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) from log-probabilities, with 0 · log 0 = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def reference(student, teacher, labels, alpha, temperature, kind, beta):
    """float64, position by position, in log space, with 0 · log 0 = 0."""
    keep = labels != -100
    s, t = student.double()[keep], teacher.double()[keep]
    ls, lt = torch.log_softmax(s / temperature, -1), torch.log_softmax(t / temperature, -1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        d = _kl(lt, ls)
    else:
        lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log1p(-beta)]), 0)
        d = beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm)
    if not keep.any():
        return torch.tensor(0.0, dtype=torch.float64)
    kd = temperature**2 * d.mean()
    ce = -torch.log_softmax(s, -1)[torch.arange(len(s)), labels[keep]].mean()
    return alpha * kd + (1 - alpha) * ce


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 6))
    vocab = draw(st.integers(2, 24))
    scale = draw(st.sampled_from([1.0, 30.0, 1e3]))  # ordinary, peaked, extreme logits
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=gen) * scale
    teacher = torch.randn(rows, vocab, generator=gen) * scale
    forbidden = torch.rand(rows, vocab, generator=gen) < draw(st.sampled_from([0.0, 0.3]))
    forbidden[:, 0] = False  # the teacher keeps at least one token per row
    teacher = teacher.masked_fill(forbidden, -math.inf)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels = labels.masked_fill(torch.rand(rows, generator=gen) < 0.3, -100)
    return {
        "student": student,
        "teacher": teacher,
        "labels": labels,
        "alpha": draw(st.sampled_from([0.0, 0.5, 1.0])),
        "temperature": draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])),
        "kind": draw(st.sampled_from(["forward_kl", "jsd"])),
        "beta": draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])),
        "dtype": draw(st.sampled_from([torch.float32, torch.bfloat16])),
    }


def _check(loss: torch.Tensor, grad: torch.Tensor, problem: dict, student: torch.Tensor) -> None:
    expected = reference(
        student.float(),
        problem["teacher"].to(problem["dtype"]).float(),
        problem["labels"],
        problem["alpha"],
        problem["temperature"],
        problem["kind"],
        problem["beta"],
    )
    assert math.isfinite(loss.item()) and grad.isfinite().all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-3, atol=1e-3 * (1 + expected.abs().item()))


@SETTINGS
@given(problems())
def test_logit_path_matches_the_reference(problem: dict) -> None:
    student = problem["student"].to(problem["dtype"]).requires_grad_()
    out = distillation_loss(
        student,
        problem["teacher"].to(problem["dtype"]),
        problem["labels"],
        alpha=problem["alpha"],
        temperature=problem["temperature"],
        kind=problem["kind"],
        beta=problem["beta"],
    )
    out.loss.backward()
    _check(out.loss, student.grad, problem, student.detach())


@SETTINGS
@given(problems(), st.integers(1, 4))
def test_fused_path_matches_the_reference(problem: dict, chunk_size: int) -> None:
    """hidden = logits and an identity head: the fused objective sees exactly the same logits, in chunks."""
    dtype = problem["dtype"]
    vocab = problem["student"].shape[-1]
    student = problem["student"].to(dtype).requires_grad_()
    teacher = problem["teacher"].to(dtype)
    finite_teacher = teacher.nan_to_num(neginf=0.0)
    out = fused_distillation_loss(
        student,
        torch.eye(vocab, dtype=dtype),
        finite_teacher,
        torch.eye(vocab, dtype=dtype),
        problem["labels"],
        teacher_head_bias=torch.zeros(vocab, dtype=dtype).masked_fill(teacher.isinf().all(0), -math.inf),
        alpha=problem["alpha"],
        temperature=problem["temperature"],
        kind=problem["kind"],
        beta=problem["beta"],
        chunk_size=chunk_size,
    )
    out.loss.backward()
    # the -inf head bias forbids a token for every row: the reference sees the same logits
    expected_teacher = finite_teacher.masked_fill(teacher.isinf().all(0).expand_as(teacher), -math.inf)
    _check(out.loss, student.grad, {**problem, "teacher": expected_teacher}, student.detach())


@SETTINGS
@given(problems())
def test_sparse_path_with_every_id_matches_the_reference(problem: dict) -> None:
    """k = V: the cached-teacher objective is exact, forbidden tokens included (log-probability -inf)."""
    student = problem["student"].to(problem["dtype"]).requires_grad_()
    rows, vocab = student.shape
    teacher = problem["teacher"].to(problem["dtype"])
    out = sparse_distillation_loss(
        student,
        torch.arange(vocab).expand(rows, vocab),
        torch.log_softmax(teacher.float(), -1),
        labels=problem["labels"],
        alpha=problem["alpha"],
        temperature=problem["temperature"],
        kind=problem["kind"],
        beta=problem["beta"],
    )
    out.loss.backward()
    _check(out.loss, student.grad, problem, student.detach())
