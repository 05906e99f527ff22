"""The fused, chunked objective against `distillation_loss` on the materialised logits."""

from __future__ import annotations

import pytest
import torch

from hf_enhance import distillation_loss, fused_distillation_loss
from hf_enhance.objectives.fused import default_chunk_size

N, V, H_S, H_T = 37, 101, 16, 24


def make_inputs(dtype: torch.dtype = torch.float32, bias: bool = False, masked: bool = True) -> dict:
    student_hidden = torch.randn(N, H_S, dtype=dtype, requires_grad=True)
    student_weight = (torch.randn(V, H_S) * 0.5).to(dtype).requires_grad_()
    teacher_hidden = torch.randn(N, H_T, dtype=dtype)
    teacher_weight = (torch.randn(V, H_T) * 0.5).to(dtype)
    labels = torch.randint(0, V, (N,))
    if masked:
        labels[::3] = -100
    inputs = {
        "student_hidden": student_hidden,
        "student_head_weight": student_weight,
        "teacher_hidden": teacher_hidden,
        "teacher_head_weight": teacher_weight,
        "labels": labels,
    }
    if bias:
        inputs["student_head_bias"] = torch.randn(V, dtype=dtype, requires_grad=True)
        inputs["teacher_head_bias"] = torch.randn(V, dtype=dtype)
    return inputs


def naive(inputs: dict, **settings) -> tuple:
    """Materialise both logit matrices and differentiate `distillation_loss` with autograd."""
    student_logits = inputs["student_hidden"] @ inputs["student_head_weight"].T
    teacher_logits = inputs["teacher_hidden"] @ inputs["teacher_head_weight"].T
    if "student_head_bias" in inputs:
        student_logits = student_logits + inputs["student_head_bias"]
        teacher_logits = teacher_logits + inputs["teacher_head_bias"]
    out = distillation_loss(student_logits, teacher_logits, inputs["labels"], **settings)
    return out, _grads(out.loss, inputs)


def fused(inputs: dict, **settings) -> tuple:
    out = fused_distillation_loss(**inputs, **settings)
    return out, _grads(out.loss, inputs)


def _grads(loss: torch.Tensor, inputs: dict) -> list[torch.Tensor]:
    leaves = [inputs["student_hidden"], inputs["student_head_weight"]]
    if "student_head_bias" in inputs:
        leaves.append(inputs["student_head_bias"])
    return list(torch.autograd.grad(loss, leaves))


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Max abs difference within `rel` of the reference's largest magnitude (per tensor)."""
    scale = expected.detach().abs().max().clamp(min=1e-12)
    assert actual.dtype == expected.dtype
    assert ((actual.detach() - expected.detach()).abs().max() / scale).item() <= rel


@pytest.mark.parametrize(
    "kind,beta",
    [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0)],
)
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.0), (4.0, 1.0), (2.0, 0.3)])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_values_and_gradients_match_materialised_logits(
    kind: str, beta: float, temperature: float, alpha: float, chunk_size: int
) -> None:
    inputs = make_inputs()
    settings = {"alpha": alpha, "temperature": temperature, "kind": kind, "beta": beta}
    expected, expected_grads = naive(inputs, **settings)
    out, grads = fused(inputs, chunk_size=chunk_size, **settings)
    for name in ("loss", "kd_loss", "ce_loss"):
        assert getattr(out, name).item() == pytest.approx(getattr(expected, name).item(), rel=1e-5, abs=1e-7)
    assert out.num_tokens.item() == expected.num_tokens.item() == N - len(range(0, N, 3))
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close_rel(got, want, 1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_without_labels_distils_every_position(kind: str) -> None:
    inputs = make_inputs(bias=True)
    inputs["labels"] = None
    expected, expected_grads = naive(inputs, kind=kind, temperature=3.0)
    out, grads = fused(inputs, kind=kind, temperature=3.0, chunk_size=10)
    assert out.ce_loss is None
    assert out.num_tokens.item() == N
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert out.kd_loss.item() == pytest.approx(expected.kd_loss.item(), rel=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_biases_and_leading_dims() -> None:
    inputs = make_inputs(bias=True)
    expected, expected_grads = naive(inputs, kind="jsd")
    batched = dict(inputs)
    batched["student_hidden"] = inputs["student_hidden"].reshape(1, N, H_S)
    batched["teacher_hidden"] = inputs["teacher_hidden"].reshape(1, N, H_T)
    batched["labels"] = inputs["labels"].reshape(1, N)
    out = fused_distillation_loss(**batched, kind="jsd", chunk_size=5)
    grads = _grads(out.loss, inputs)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_all_masked_gives_zero_loss_and_zero_gradients() -> None:
    inputs = make_inputs()
    inputs["labels"] = torch.full((N,), -100)
    out, grads = fused(inputs)
    assert out.loss.item() == 0.0
    assert out.num_tokens.item() == 0
    assert all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_bfloat16_inputs_return_bfloat16_gradients() -> None:
    inputs = make_inputs(dtype=torch.bfloat16)
    expected, expected_grads = naive(inputs, kind="reverse_kl")
    out, grads = fused(inputs, kind="reverse_kl", chunk_size=7)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-3)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.bfloat16
        assert_close_rel(got, want, 2e-2)


def test_teacher_receives_no_gradient() -> None:
    inputs = make_inputs(bias=True)
    for name in ("teacher_hidden", "teacher_head_weight", "teacher_head_bias"):
        inputs[name].requires_grad_()
    fused_distillation_loss(**inputs).loss.backward()
    assert all(
        inputs[name].grad is None for name in ("teacher_hidden", "teacher_head_weight", "teacher_head_bias")
    )
    assert inputs["student_head_weight"].grad is not None


def test_gradient_scales_with_the_upstream_gradient() -> None:
    inputs = make_inputs()
    _, grads = fused(inputs)
    scaled = fused_distillation_loss(**inputs).loss * 3.0
    for got, want in zip(_grads(scaled, inputs), grads, strict=True):
        torch.testing.assert_close(got, 3.0 * want)


def test_no_grad_gives_the_same_values() -> None:
    inputs = make_inputs()
    expected = fused_distillation_loss(**inputs)
    with torch.no_grad():
        out = fused_distillation_loss(**inputs)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, expected.loss.detach())


def test_second_backward_is_refused() -> None:
    inputs = make_inputs()
    loss = fused_distillation_loss(**inputs).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"student_head_weight": torch.randn(V, H_S + 1)}, "does not fit the student hidden"),
        ({"teacher_head_weight": torch.randn(V, H_S)}, "does not fit the teacher hidden"),
        ({"teacher_head_weight": torch.randn(V + 3, H_T)}, "vocabulary rows"),
        ({"teacher_hidden": torch.randn(N - 1, H_T)}, "different positions"),
        ({"labels": torch.zeros(N + 1, dtype=torch.long)}, "do not match"),
        ({"student_head_bias": torch.zeros(V + 1)}, "student_head_bias has shape"),
        ({"student_hidden": torch.randn(N, H_S, dtype=torch.float64)}, "Cast them to one dtype"),
    ],
)
def test_bad_shapes_raise_clear_errors(change: dict, message: str) -> None:
    inputs = make_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        fused_distillation_loss(**inputs)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_bad_chunk_size(chunk_size: object) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        fused_distillation_loss(**make_inputs(), chunk_size=chunk_size)  # type: ignore[arg-type]


def test_bad_settings_are_checked_before_any_work() -> None:
    with pytest.raises(ValueError, match="Valid choices"):
        fused_distillation_loss(**make_inputs(), kind="kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        fused_distillation_loss(**make_inputs(), alpha=1.5)


def test_under_autocast_mixed_dtypes_match_the_autocast_naive_path() -> None:
    inputs = make_inputs()
    inputs["student_hidden"] = inputs["student_hidden"].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_grads = naive(inputs, kind="jsd")
        out, grads = fused(inputs, kind="jsd", chunk_size=9)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-3)
    assert grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close_rel(got, want, 2e-2)


@pytest.mark.parametrize(
    ("vocab_size", "chunk"),
    [(97, 1024), (8192, 1024), (32000, 256), (49152, 128), (128256, 64), (262144, 32)],
)
def test_the_default_chunk_keeps_one_float32_buffer_within_32_mib(vocab_size: int, chunk: int) -> None:
    assert default_chunk_size(vocab_size) == chunk
    assert (
        chunk * vocab_size * 4 <= 32 * 2**20 or chunk == 32
    )  # 32 tokens is the floor, whatever the vocabulary


@pytest.mark.parametrize(
    ("vocab_size", "chunk"), [(8192, 1024), (128256, 1024), (151936, 512), (262144, 512), (2**22, 32)]
)
def test_on_a_gpu_the_default_chunk_keeps_one_float32_buffer_within_512_mib(
    vocab_size: int, chunk: int
) -> None:
    assert default_chunk_size(vocab_size, torch.device("cuda", 0)) == chunk
    assert default_chunk_size(vocab_size, "cuda") == chunk
    assert chunk * vocab_size * 4 <= 512 * 2**20 or chunk == 32


def test_no_chunk_size_means_the_vocabulary_sized_default() -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(300, 8, requires_grad=True), torch.randn(40_000, 8, requires_grad=True)
    teacher_hidden, teacher_weight = torch.randn(300, 8), torch.randn(40_000, 8)
    labels = torch.randint(0, 40_000, (300,))
    default = fused_distillation_loss(hidden, weight, teacher_hidden, teacher_weight, labels)
    explicit = fused_distillation_loss(hidden, weight, teacher_hidden, teacher_weight, labels, chunk_size=128)
    one_chunk = fused_distillation_loss(
        hidden, weight, teacher_hidden, teacher_weight, labels, chunk_size=300
    )
    assert default_chunk_size(40_000) == 128
    assert torch.equal(default.loss, explicit.loss)  # same chunks, same float summation order
    torch.testing.assert_close(default.loss, one_chunk.loss, rtol=1e-6, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_a_gpu_half_precision_heads_match_the_float32_objective(dtype: torch.dtype) -> None:
    """On CUDA the weight gradient of each chunk is a half-precision product (tensor cores) added to a float32
    total: within half-precision rounding of the float32 objective on CPU, the loss and both gradients."""
    reference = make_inputs()
    expected, expected_grads = fused(reference, chunk_size=8)
    inputs = {
        name: tensor.detach().to("cuda", dtype) if tensor.is_floating_point() else tensor.cuda()
        for name, tensor in reference.items()
    }
    for name in ("student_hidden", "student_head_weight"):
        inputs[name].requires_grad_()
    out, grads = fused(inputs, chunk_size=8)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=2e-2)
    assert [grad.dtype for grad in grads] == [dtype, dtype]
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close_rel(got.float().cpu(), want, 3e-2)
