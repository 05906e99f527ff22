"""Tiny regression model and data for fast Trainer runs on CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from hf_enhance.training import EnhancedTrainingArguments


class TinyRegressor(nn.Module):
    """y = w·x + b with an MSE loss: a model the Trainer can train, save and reload in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred = self.linear(x).squeeze(-1)
        out = {"logits": pred}
        if labels is not None:
            out["loss"] = F.mse_loss(pred, labels)
        return out


def regression_data(n: int = 32, nan_row: int | None = None) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    if nan_row is not None:
        x[nan_row, 0] = float("nan")
    return Dataset.from_dict({"x": x.tolist(), "labels": y.tolist()})


def scripted_metric(values: Iterable[float], name: str = "score") -> Callable[[Any], dict[str, float]]:
    """A compute_metrics that returns the next scripted value at each evaluation."""
    it = iter(values)
    return lambda _: {name: next(it)}


def make_args(tmp_path: Path, **overrides: Any) -> EnhancedTrainingArguments:
    """Small, fast, CPU-only arguments: 4 steps per epoch on `regression_data()`, a log every 2 steps."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 3,
        "learning_rate": 0.05,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 2,
        "seed": 0,
    }
    settings.update(overrides)
    return EnhancedTrainingArguments(**settings)
