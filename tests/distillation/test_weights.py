"""StepWeights: one micro-batch's share of the step, the same for the loss and the logged components."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hf_enhance.distillation.weights import StepWeights
from hf_enhance.objectives import DistillationOutput


def _result(kd: float, ce: float, tokens: int) -> DistillationOutput:
    alpha = 0.25
    kd_t, ce_t = torch.tensor(kd, requires_grad=True), torch.tensor(ce, requires_grad=True)
    return DistillationOutput(alpha * kd_t + (1 - alpha) * ce_t, kd_t, ce_t, torch.tensor(tokens))


def _accelerator(processes: int) -> SimpleNamespace:
    return SimpleNamespace(
        num_processes=processes,
        device=torch.device("cpu"),
        reduce=lambda tensor, reduction: tensor * processes,  # every process counted the same tokens
    )


@pytest.mark.parametrize("count", [None, 12])
@pytest.mark.parametrize("processes", [1, 4])
@pytest.mark.parametrize("across", [False, True])
def test_the_logged_components_add_up_to_the_loss_trainer_logs(count, processes, across) -> None:
    """Trainer logs loss / micro_batches (no count) averaged over processes; the components must sum to it."""
    result = _result(kd=2.0, ce=4.0, tokens=3)
    hidden = torch.tensor(0.5)
    weights = StepWeights.of(result.num_tokens, count, all_ranks=False, accelerator=_accelerator(processes),
                             tokens_across_processes=across, micro_batches=2)  # fmt: skip
    loss = weights.loss(result, hidden, hidden_weight=2.0)
    logged_loss = loss / (2 if count is None else 1)  # what Trainer adds up for this micro-batch, per process
    terms = weights.logged(result, 2.0 * hidden, training=True, labels_term=True)
    torch.testing.assert_close(
        0.25 * terms["kd_loss"] + 0.75 * terms["ce_loss"] + terms["hidden_loss"], logged_loss
    )


def test_a_share_is_this_micro_batchs_tokens_over_the_step() -> None:
    weights = StepWeights.of(torch.tensor(3), 12, all_ranks=False, accelerator=_accelerator(4),
                             tokens_across_processes=True, micro_batches=2)  # fmt: skip
    assert (float(weights.share), weights.processes, weights.micro_batches) == (0.25, 4, 1)


def test_an_all_rank_result_carries_the_process_factor_in_its_gradient_only() -> None:
    """Value: the term itself once Trainer averages over ranks; gradient: times processes, which DDP divides out."""
    result = _result(kd=2.0, ce=4.0, tokens=12)
    weights = StepWeights.of(result.num_tokens, 3, all_ranks=True, accelerator=_accelerator(4),
                             tokens_across_processes=False, micro_batches=1)  # fmt: skip
    assert float(weights.share) == 1.0  # 12 tokens of all ranks over 3 × 4 counted
    loss = weights.loss(result, None, hidden_weight=0.0)
    torch.testing.assert_close(loss.detach(), result.loss.detach())
    loss.backward()
    torch.testing.assert_close(result.kd_loss.grad, torch.tensor(0.25 * 4))
    logged = weights.logged(result, None, training=True, labels_term=False)
    assert set(logged) == {"kd_loss"}  # on-policy: no label term logged
    # The same on every rank: the term itself.
    torch.testing.assert_close(logged["kd_loss"], result.kd_loss.detach())


def test_evaluation_logs_plain_means() -> None:
    result = _result(kd=2.0, ce=4.0, tokens=5)
    weights = StepWeights.of(result.num_tokens, None, all_ranks=False, accelerator=_accelerator(2),
                             tokens_across_processes=True, micro_batches=4)  # fmt: skip
    logged = weights.logged(result, torch.tensor(0.5), training=False, labels_term=True)
    assert {name: float(value) for name, value in logged.items()} == {
        "kd_loss": 2.0,
        "ce_loss": 4.0,
        "hidden_loss": 0.5,
    }
