"""The private transformers/accelerate names hf_enhance relies on still exist and take what we pass.

Run in CI on the oldest and the newest supported transformers: a release that moves one fails here, by name.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_enhance.training import EnhancedTrainer
from hf_enhance.training.internals import (
    ACCELERATOR_PRIVATE_ATTRIBUTES,
    PREPARED_MARK,
    TRAINER_PRIVATE_ATTRIBUTES,
    TRAINER_PRIVATE_METHODS,
    TrainerInternals,
    forget_evaluation_prepare,
    signature_problem,
)
from tests.training.tiny import TinyRegressor, regression_data


@pytest.mark.parametrize("name", sorted(TRAINER_PRIVATE_METHODS))
def test_trainer_method_exists_with_the_parameters_we_pass(name: str) -> None:
    problem = signature_problem(name)
    assert problem is None, problem


def test_a_moved_method_is_reported_with_the_version_and_the_name() -> None:
    class Moved(Trainer):
        def _clip_grad_norm(self, module: nn.Module, max_norm: float) -> None:  # `model` renamed
            return None

    class Gone(Trainer):
        _save = None  # type: ignore[assignment]

    moved = signature_problem("_clip_grad_norm", Moved)
    gone = signature_problem("_save", Gone)
    assert moved is not None and "Trainer._clip_grad_norm" in moved and transformers.__version__ in moved
    assert gone is not None and "Trainer._save is gone" in gone and transformers.__version__ in gone


def test_hooks_shadow_nothing_in_trainer() -> None:
    """Our hook names are ours: a transformers release that adds one of them would be silently overridden."""
    hooks = [
        name
        for name, value in vars(TrainerInternals).items()
        if inspect.isfunction(value) and name not in TRAINER_PRIVATE_METHODS
    ]
    assert hooks
    assert [name for name in hooks if hasattr(Trainer, name)] == []


def test_trainer_counts_label_tokens_after_the_shift_when_told_to(tmp_path: Path) -> None:
    assert "_loss_shifts_labels" in TRAINER_PRIVATE_ATTRIBUTES
    trainer = EnhancedTrainer(
        model=TinyRegressor(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none")
    )
    trainer.model_accepts_loss_kwargs = True  # as DistillationTrainer: Trainer counts only for such losses
    batch = {"labels": torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])}
    counts = {}
    for shifted in (False, True):
        trainer.count_shifted_labels(shifted)
        counts[shifted] = int(trainer._count_batch_items([batch], torch.device("cpu")))
    assert counts == {False: 5, True: 3}


def test_trainer_keeps_its_signature_columns_in_the_attribute_we_extend(tmp_path: Path) -> None:
    assert "_signature_columns" in TRAINER_PRIVATE_ATTRIBUTES
    trainer = Trainer(
        model=TinyRegressor(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none")
    )
    trainer._set_signature_columns_if_needed()
    assert isinstance(trainer._signature_columns, list) and "x" in trainer._signature_columns


def test_evaluation_prepare_marks_and_registers_the_model_and_forgetting_undoes_both(tmp_path: Path) -> None:
    assert ACCELERATOR_PRIVATE_ATTRIBUTES == ("_models",)
    model = TinyRegressor()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=8)
    trainer = EnhancedTrainer(model=model, args=args, eval_dataset=regression_data(8))
    trainer.evaluate()
    assert getattr(model, PREPARED_MARK, False) is True
    assert model in trainer.accelerator._models
    forget_evaluation_prepare(trainer)
    assert not hasattr(model, PREPARED_MARK)
    assert model not in trainer.accelerator._models
