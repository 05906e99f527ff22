"""`ComponentLog`: the loss components (kd_loss, ce_loss, hidden_loss) kept between two logs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

__all__ = ["ComponentLog"]


class ComponentLog:
    """Components of the loss, each micro-batch's already weighted as in the loss (`StepWeights.logged`).

    At a training log each component is the sum of its values over the optimizer steps it came from, divided by
    that number of steps (as Trainer logs ``loss``); at an evaluation log, the mean over the evaluation batches.
    Either is then averaged over processes.
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._steps: dict[str, set[int]] = defaultdict(set)  # optimizer steps each term came from

    def add(self, terms: dict[str, torch.Tensor], *, training: bool, step: int) -> None:
        """Keep one micro-batch's components (from optimizer step ``step`` when training)."""
        values = self._values["train" if training else "eval"]
        for name, value in terms.items():
            values[name].append(value)
            if training:
                self._steps[name].add(step)

    def start_evaluation(self) -> None:
        """Forget the components of an earlier, unfinished evaluation."""
        self._values["eval"].clear()

    def report(
        self, logs: dict[str, float], mean_over_processes: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Add the pending components to a Trainer log (``loss``: training; ``eval_loss`` and the like: evaluation)."""
        prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss")), None)
        mode, prefix = ("train", "") if "loss" in logs else ("eval", prefix)
        pending = self._values[mode]
        if prefix is not None and pending:
            for name, values in pending.items():
                stacked = torch.stack(values)
                steps = max(len(self._steps[name]), 1)
                value = stacked.sum() / steps if mode == "train" else stacked.mean()
                logs[f"{prefix}{name}"] = round(mean_over_processes(value).item(), 6)
            pending.clear()
        if mode == "train":
            self._steps.clear()
