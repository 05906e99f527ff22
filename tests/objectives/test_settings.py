"""LossSettings: one validated set of settings that every objective takes."""

from __future__ import annotations

import inspect

import pytest

from hf_enhance import distillation_loss, fused_distillation_loss, sparse_distillation_loss
from hf_enhance.distillation import DistillationTrainingArguments, vocab_parallel_distillation_loss
from hf_enhance.objectives import LossSettings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alpha": 1.5}, r"alpha=1.5 is outside \[0, 1\]"),
        ({"alpha": "0.5"}, r"alpha='0.5' is a str"),
        ({"temperature": 0.0}, r"temperature=0.0 must be a finite number > 0"),
        ({"temperature": float("inf")}, r"temperature=inf"),
        ({"kind": "kl"}, r"Unknown distillation loss kind 'kl'.*forward_kl, reverse_kl, jsd"),
        ({"beta": float("nan")}, r"beta=nan is outside \[0, 1\]"),
    ],
)
def test_out_of_range_settings_are_refused_with_the_fix(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossSettings(**fields)


def test_every_objective_takes_the_settings_as_keywords() -> None:
    keys = set(LossSettings().as_kwargs())
    for objective in (distillation_loss, fused_distillation_loss, sparse_distillation_loss,
                      vocab_parallel_distillation_loss):  # fmt: skip
        assert keys <= set(inspect.signature(objective).parameters), objective.__name__


def test_an_on_policy_batch_drops_the_label_term_and_nothing_else() -> None:
    settings = LossSettings(alpha=0.3, temperature=1.5, kind="jsd", beta=0.2)
    assert settings.for_batch(on_policy=False) is settings
    assert settings.for_batch(on_policy=True) == LossSettings(
        alpha=1.0, temperature=1.5, kind="jsd", beta=0.2
    )


def test_the_training_arguments_give_their_settings(tmp_path) -> None:
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path), alpha=0.2, temperature=3.0, distillation_loss="reverse_kl", jsd_beta=0.7
    )
    assert args.loss_settings() == LossSettings(0.2, 3.0, "reverse_kl", 0.7)
