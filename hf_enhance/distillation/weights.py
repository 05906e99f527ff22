"""`StepWeights`: a micro-batch's share of the optimizer step, the one place the loss and the logs take it from.

Trainer sums the losses `compute_loss` returns over an optimizer step's micro-batches (dividing by the number of
micro-batches when it has no token count), and DDP/FSDP average the gradients over processes. The objectives
return means over a micro-batch's tokens. To make the step's loss the mean over every token of the step (all
micro-batches, all processes), each micro-batch's means are weighted by

    share = tokens in this micro-batch / tokens in the whole step (``num_items_in_batch``)

and the returned loss is multiplied by the process count when the count spans processes (the gradient average
divides it out again). A vocabulary-parallel result (`ShardedPlacement`) already covers every rank's tokens and
is the same on every rank: its share counts all ranks' tokens, its gradient carries the process factor, and its
value carries 1/processes of it, so Trainer's mean of the losses over ranks logs the term itself.

The logged components (kd_loss, ce_loss, hidden_loss) get the same weights in training, so they add up to the
logged loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hf_enhance.objectives.losses import DistillationOutput

__all__ = ["StepWeights"]


@dataclass(frozen=True)
class StepWeights:
    """How one micro-batch's means enter the optimizer step.

    Attributes:
        share: multiplies the micro-batch's means (tokens here / tokens in the step; 1 without a count).
        processes: the returned loss is multiplied by it; the gradient average over processes divides it out.
        all_ranks: the result covers every rank's tokens (a collective objective), the same on each rank.
        micro_batches: Trainer divides the returned loss by it (no token count: a mean over micro-batches).
    """

    share: torch.Tensor | float = 1.0
    processes: int = 1
    all_ranks: bool = False
    micro_batches: int = 1

    @classmethod
    def of(
        cls,
        num_tokens: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
        *,
        all_ranks: bool,
        accelerator: Any,
        tokens_across_processes: bool,
        micro_batches: int,
    ) -> StepWeights:
        """The weights of a result over ``num_tokens`` tokens in a step of ``num_items_in_batch`` tokens.

        Args:
            num_items_in_batch: Trainer's token count of the step; None when it has none (it then averages the
                ``micro_batches`` losses of the step).
            all_ranks: the result covers every rank's tokens (vocabulary-parallel).
            accelerator: the run's `accelerate.Accelerator` (process count; sums a per-process count for an
                all-rank result).
            tokens_across_processes: Trainer counted every process's tokens (``average_tokens_across_devices``).
        """
        processes = accelerator.num_processes
        if num_items_in_batch is None:
            return cls(1.0, processes if all_ranks else 1, all_ranks, micro_batches)
        if all_ranks and not tokens_across_processes:
            local = torch.as_tensor(num_items_in_batch, device=accelerator.device, dtype=torch.float32)
            num_items_in_batch = accelerator.reduce(local, reduction="sum")
        processes = processes if all_ranks or tokens_across_processes else 1
        return cls(num_tokens / num_items_in_batch, processes, all_ranks)

    def loss(
        self, result: DistillationOutput, hidden_share: torch.Tensor | None, hidden_weight: float
    ) -> torch.Tensor:
        """What `compute_loss` returns: the weighted objective plus the hidden-state term's share, times processes."""
        loss = result.loss * self.share
        if self.all_ranks:
            # Gradient: the all-rank term times `processes` (below), as the gradient average over ranks needs.
            # Value: 1/processes of that on each rank, so Trainer's mean of the losses over ranks logs the term.
            loss = loss - (loss * (1 - 1 / self.processes)).detach()
        if hidden_share is not None:
            loss = loss + hidden_weight * hidden_share
        return loss * self.processes

    def logged(
        self,
        result: DistillationOutput,
        hidden_share: torch.Tensor | None,
        *,
        training: bool,
        labels_term: bool,
    ) -> dict[str, torch.Tensor]:
        """The components to log for this micro-batch, weighted as in the loss (training) or plain (evaluation).

        In training each is scaled as its part of the returned loss after Trainer's division by the
        micro-batches and average over processes, so the components of a step add up to its logged loss.
        ``labels_term``: log ce_loss (not on on-policy batches, whose loss has no label term).
        """
        scale = self.share
        if training:
            scale = scale * self.processes / self.micro_batches
        if self.all_ranks:  # every rank holds the same all-rank terms; the logs average over ranks
            scale = scale / self.processes
        terms = {"kd_loss": result.kd_loss * scale}
        if labels_term and result.ce_loss is not None:
            terms["ce_loss"] = result.ce_loss * scale
        if hidden_share is not None:
            terms["hidden_loss"] = hidden_share * (self.processes / self.micro_batches if training else 1)
        return {name: torch.as_tensor(value).detach().float() for name, value in terms.items()}
