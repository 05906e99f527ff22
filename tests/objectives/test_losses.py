"""The objective against an independent float64 reference written with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_enhance import distillation_loss


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(-1)


def reference(student, teacher, labels, alpha, temperature, kind, beta, ignore_index=-100):
    """Position by position in float64: T² · mean D + CE, excluding ignored positions."""
    s = student.double().numpy().reshape(-1, student.shape[-1])
    t = teacher.double().numpy().reshape(-1, teacher.shape[-1])
    keep = np.ones(len(s), bool) if labels is None else labels.numpy().reshape(-1) != ignore_index
    ps, pt = _softmax(s[keep] / temperature), _softmax(t[keep] / temperature)
    if kind == "forward_kl":
        d = _kl(pt, ps)
    elif kind == "reverse_kl":
        d = _kl(ps, pt)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
    kd = temperature**2 * d.mean() if keep.any() else 0.0
    if labels is None:
        return kd, kd, None
    y = labels.numpy().reshape(-1)[keep]
    log_p = np.log(_softmax(s[keep]))
    ce = -log_p[np.arange(len(y)), y].mean() if keep.any() else 0.0
    return alpha * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_matches_reference(kind: str, beta: float, temperature: float, alpha: float) -> None:
    student, teacher = torch.randn(3, 5, 11) * 3, torch.randn(3, 5, 11) * 3
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = -100
    labels[2, 4] = -100
    out = distillation_loss(
        student, teacher, labels, alpha=alpha, temperature=temperature, kind=kind, beta=beta
    )
    loss, kd, ce = reference(student, teacher, labels, alpha, temperature, kind, beta)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert out.kd_loss.item() == pytest.approx(kd, rel=1e-5, abs=1e-6)
    assert out.ce_loss.item() == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert out.num_tokens.item() == 12


def test_masked_positions_do_not_count() -> None:
    """Changing logits at ignored positions changes neither term."""
    student, teacher = torch.randn(2, 6, 7), torch.randn(2, 6, 7)
    labels = torch.randint(0, 7, (2, 6))
    labels[:, 3:] = -100
    base = distillation_loss(student, teacher, labels)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[:, 3:] += 10 * torch.randn(2, 3, 7)
    teacher2[:, 3:] -= 10 * torch.randn(2, 3, 7)
    moved = distillation_loss(student2, teacher2, labels)
    torch.testing.assert_close(base.loss, moved.loss)
    torch.testing.assert_close(base.kd_loss, moved.kd_loss)


def test_custom_ignore_index() -> None:
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([1, 7, 2, 7])
    out = distillation_loss(student, teacher, labels, ignore_index=7)
    loss, _, _ = reference(student, teacher, labels, 0.5, 2.0, "forward_kl", 0.5, ignore_index=7)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    assert out.num_tokens.item() == 2


def test_identical_teacher_and_student_give_zero_kd() -> None:
    logits = torch.randn(4, 9, 13)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        out = distillation_loss(logits, logits.clone(), kind=kind)
        assert out.kd_loss.abs().item() < 1e-6


def test_temperature_softens_and_scales_by_t_squared() -> None:
    """kd_loss is exactly T² times the mean KL between the softened distributions."""
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    out = distillation_loss(student, teacher, temperature=3.0)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student / 3, -1),
        torch.log_softmax(teacher / 3, -1),
        reduction="batchmean",
        log_target=True,
    )
    assert out.kd_loss.item() == pytest.approx(9 * kl.item(), rel=1e-5)


def test_no_labels_is_pure_distillation_over_all_positions() -> None:
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    out = distillation_loss(student, teacher, alpha=0.2)
    assert out.ce_loss is None
    assert out.loss.item() == pytest.approx(out.kd_loss.item())
    assert out.num_tokens.item() == 6


def test_all_masked_gives_zero_with_gradient_path() -> None:
    student = torch.randn(2, 4, 6, requires_grad=True)
    out = distillation_loss(student, torch.randn(2, 4, 6), torch.full((2, 4), -100))
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    out.loss.backward()
    assert student.grad is not None and torch.all(student.grad == 0)


def test_low_precision_inputs_are_computed_in_float32() -> None:
    student, teacher = torch.randn(4, 7, 50) * 5, torch.randn(4, 7, 50) * 5
    labels = torch.randint(0, 50, (4, 7))
    full = distillation_loss(student.bfloat16().float(), teacher.bfloat16().float(), labels)
    half = distillation_loss(student.bfloat16(), teacher.bfloat16(), labels)
    assert half.loss.dtype == torch.float32
    torch.testing.assert_close(half.loss, full.loss)


def test_extreme_logits_stay_finite() -> None:
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0]])
    out = distillation_loss(student, teacher, torch.tensor([0]), temperature=1.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(student.grad).all()


def test_gradient_matches_reference_direction() -> None:
    """Gradient w.r.t. student logits at T: T * (p_s - p_t) / N for forward KL (Hinton et al.)."""
    student = torch.randn(5, 8, requires_grad=True)
    teacher = torch.randn(5, 8)
    out = distillation_loss(student, teacher, temperature=2.0)
    out.loss.backward()
    expected = 2.0 * (torch.softmax(student / 2, -1) - torch.softmax(teacher / 2, -1)) / 5
    torch.testing.assert_close(student.grad, expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 1.5}, "alpha=1.5 is outside"),
        ({"alpha": -0.1}, "alpha=-0.1 is outside"),
        ({"temperature": 0.0}, "temperature=0.0 must be"),
        ({"temperature": -1.0}, "temperature=-1.0 must be"),
        ({"kind": "kl"}, "Valid choices: forward_kl, reverse_kl, jsd"),
        ({"kind": "jsd", "beta": 2.0}, "beta=2.0 is outside"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), **kwargs)


def test_shape_mismatch_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"labels .* do not match"):
        distillation_loss(torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"alpha": "0.5"}, r"alpha='0\.5' is a str; it must be a number"),
        ({"temperature": None}, "temperature=None is a NoneType; it must be a number"),
        ({"beta": True}, "beta=True is a bool"),
    ],
)
def test_settings_that_are_not_numbers_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_loss(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 1]), **settings)


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 5]), r"id 5, outside \[0, 5\)"),
        (torch.tensor([-3, 1]), r"id -3, outside \[0, 5\)"),
        (torch.tensor([0.0, 1.0]), "labels are torch.float32, but the label term needs integer"),
    ],
)
def test_labels_outside_the_classes_are_refused(labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_loss(torch.randn(2, 5), torch.randn(2, 5), labels)
    # ignore_index positions are not checked
    distillation_loss(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([-100, 4]))
