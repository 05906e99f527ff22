"""The on-policy recipe inside one run: lmbda schedules, the objective warning, logs of generated steps, defaults."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from hf_enhance import DistillationTrainer, DistillationTrainingArguments
from tests.distillation.test_on_policy import gpt2, prompt_completion_rows
from tests.examples.tiny_lm import tiny_tokenizer
from tests.tiny import distillation_args


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def _trainer(tokenizer: PreTrainedTokenizerFast, tmp_path: Path, **fields) -> DistillationTrainer:
    settings = {"max_steps": 4, "per_device_train_batch_size": 2, "max_new_tokens": 4, "logging_steps": 1,
                "alpha": 1.0, "distillation_loss": "reverse_kl", "temperature": 1.0, **fields}  # fmt: skip
    return DistillationTrainer(
        model=gpt2(tokenizer, 0), teacher_model=gpt2(tokenizer, 1), args=distillation_args(tmp_path, **settings),
        train_dataset=prompt_completion_rows(), processing_class=tokenizer,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [0.8] * 6), ("linear", [0.0, 0.2, 0.4, 0.6, 0.8, 0.8]), ("switch", [0, 0, 0, 0, 0.8, 0.8])],
)
def test_lmbda_follows_its_schedule(tokenizer, tmp_path: Path, schedule: str, expected: list[float]) -> None:
    trainer = _trainer(tokenizer, tmp_path, lmbda=0.8, lmbda_schedule=schedule, lmbda_steps=4)
    assert [trainer.on_policy.lmbda_at(step) for step in range(6)] == pytest.approx(expected)


def test_a_switch_turns_on_policy_on_within_the_run(tokenizer, tmp_path: Path) -> None:
    """Off-policy for the first steps, then the student's own samples, with one optimizer and schedule."""
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, lmbda_schedule="switch", lmbda_steps=2)
    trainer.train()
    fractions = [
        entry["on_policy_fraction"] for entry in trainer.state.log_history if "on_policy_fraction" in entry
    ]
    assert fractions == [0.0, 0.0, 1.0, 1.0]
    assert trainer.state.global_step == 4 and trainer.lr_scheduler is not None


def test_generated_steps_log_the_students_entropy_and_how_many_answers_stopped(
    tokenizer, tmp_path: Path
) -> None:
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    vocab = len(tokenizer)
    for entry in logged:
        assert 0.0 < entry["student_entropy"] <= torch.log(torch.tensor(float(vocab))).item() + 1e-4
        assert 0.0 <= entry["eos_rate"] <= 1.0
        assert 1.0 <= entry["completion_length"] <= 4.0


@pytest.mark.parametrize(("fields", "warned"), [
    ({"distillation_loss": "forward_kl", "temperature": 1.0}, True),
    ({"distillation_loss": "reverse_kl", "temperature": 2.0}, True),
    ({"distillation_loss": "reverse_kl", "temperature": 1.0}, False),
])  # fmt: skip
def test_on_policy_with_off_policy_settings_is_warned_about(
    tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING):
        _trainer(tokenizer, tmp_path, lmbda=0.5, **fields)
    assert ("The on-policy objective is the reverse KL at T = 1" in caplog.text) is warned


def test_a_prompt_data_set_trains_without_naming_a_collator(tokenizer, tmp_path: Path) -> None:
    """Without a data_collator, prompt/completion rows get PromptCompletionCollator (Trainer's would fail)."""
    trainer = _trainer(tokenizer, tmp_path, lmbda=0.0, max_steps=2)
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.parametrize(("fields", "message"), [
    ({"lmbda_schedule": "cosine"}, "Unknown lmbda_schedule 'cosine'"),
    ({"lmbda_steps": -1}, "lmbda_steps=-1 must be an int >= 0"),
])  # fmt: skip
def test_bad_schedules_are_refused(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationTrainingArguments(output_dir=str(tmp_path), **fields)


def test_generating_without_a_tokenizer_is_refused(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs the tokenizer.*processing_class=tokenizer"):
        DistillationTrainer(model=gpt2(tokenizer, 0), teacher_model=gpt2(tokenizer, 1),
                            args=distillation_args(tmp_path, lmbda=1.0), train_dataset=prompt_completion_rows(),
                            data_collator=lambda rows: rows)  # fmt: skip


def test_prompt_rows_without_completions_are_not_taken_for_text(tokenizer, tmp_path: Path) -> None:
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "labels": [[1, 2, 3]] * 4})
    trainer = DistillationTrainer(model=gpt2(tokenizer, 0), teacher_model=gpt2(tokenizer, 1),
                                  args=distillation_args(tmp_path), train_dataset=rows, processing_class=tokenizer)  # fmt: skip
    assert trainer.data_collator.__class__.__name__ != "PromptCompletionCollator"


@pytest.mark.parametrize("fields", [{"lmbda": 0.5}, {"lmbda": 1.0, "gradient_accumulation_steps": 2},
                                    {"seq_kd": True}])  # fmt: skip
def test_resuming_mid_epoch_with_sampled_completions_equals_the_straight_run(
    tokenizer, tmp_path: Path, fields: dict
) -> None:
    """Completions are sampled before Trainer restores a checkpoint's random state; each step's sampling draws
    from its own seed (run seed, step, micro-batch, process), so a resume samples what the straight run did."""
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "load_best_model_at_end": False,
                "max_new_tokens": 4, "generation_temperature": 1.0, **fields}  # fmt: skip

    def trainer(folder: str) -> DistillationTrainer:
        return _trainer(tokenizer, tmp_path / folder, **settings)

    straight = trainer("straight")
    straight.train()
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_prompts_that_outgrow_a_models_positions_are_refused_before_generating(
    tokenizer, tmp_path: Path
) -> None:
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, max_new_tokens=8)
    prompt = torch.ones(1, 60, dtype=torch.long)  # the tiny models take 64 positions
    batch = {"prompt_input_ids": prompt, "prompt_attention_mask": torch.ones_like(prompt)}
    with pytest.raises(
        ValueError, match=r"68 positions, but the student takes at most 64.*max_prompt_length=56"
    ):
        trainer.on_policy.generate(trainer.model, batch)


def test_a_prompt_too_long_on_another_rank_is_refused_on_every_rank(tokenizer, tmp_path: Path) -> None:
    """With several processes the step's longest prompt is gathered before generating: a rank whose own prompts
    fit raises with the rank whose prompts do not, instead of waiting for it in the next collective."""
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, max_new_tokens=8)
    prompt = torch.ones(1, 10, dtype=torch.long)  # fits here
    batch = {"prompt_input_ids": prompt, "prompt_attention_mask": torch.ones_like(prompt)}

    def gather(mine: torch.Tensor) -> torch.Tensor:  # this rank's longest prompt, and another rank's
        return torch.cat([mine, torch.tensor([60])])

    with pytest.raises(ValueError, match=r"prompts are 60 tokens long.*max_prompt_length=56"):
        trainer.on_policy.swap([batch], 0, trainer.model, gather)
    assert trainer.on_policy.swap([batch], 0, trainer.model, None)[0]["prompt_input_ids"].shape[1] == 10
