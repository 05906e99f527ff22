"""MCC, metrics and parameter counts shared by the examples and the benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from classification import compute_metrics, matthews_corrcoef, parameter_counts
from peft import LoraConfig, get_peft_model
from transformers import EvalPrediction

from tests.tiny import tiny_bert_classifier


def test_mcc_extremes_and_a_hand_computed_binary_case() -> None:
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    assert matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - labels, labels) == pytest.approx(-1.0)
    assert matthews_corrcoef(np.ones_like(labels), labels) == 0.0  # the majority class: undefined -> 0
    predictions = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(predictions, labels) == pytest.approx(expected)


def test_mcc_multiclass_matches_the_covariance_definition() -> None:
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    one_hot = np.eye(3)
    x, y = one_hot[predictions], one_hot[labels]
    cov = lambda a, b: ((a - a.mean(0)) * (b - b.mean(0))).sum()  # noqa: E731
    expected = cov(x, y) / np.sqrt(cov(x, x) * cov(y, y))
    assert matthews_corrcoef(predictions, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ in length"):
        matthews_corrcoef(predictions[:5], labels)


def test_compute_metrics_reads_logits_or_a_tuple_of_them() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    labels = np.array([0, 1, 1, 1])
    for predictions in (logits, (logits, np.zeros(4))):
        metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
        assert metrics["accuracy"] == pytest.approx(0.75)
        assert metrics["mcc"] == pytest.approx(matthews_corrcoef(np.array([0, 1, 0, 1]), labels))


def test_parameter_counts_plain_and_peft() -> None:
    model = tiny_bert_classifier(num_labels=2)
    total = sum(p.numel() for p in model.parameters())
    assert parameter_counts(model) == (total, total)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    assert parameter_counts(peft_model) == peft_model.get_nb_trainable_parameters()
    assert parameter_counts(peft_model)[0] < total
