"""DistillationTrainer end to end on tiny models: causal LM, classification, PEFT and GRU students."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from hf_enhance import DistillationTrainer, DistillationTrainingArguments
from tests.tiny import (
    PLAIN_SGD,
    GRUClassifier,
    classification_dataset,
    lm_dataset,
    pad_collator,
    tiny_bert_classifier,
    tiny_gpt2,
)
from tests.tiny import (
    distillation_args as make_args,
)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_causal_lm_trains_logs_components_and_leaves_teacher_untouched(tmp_path: Path) -> None:
    student, teacher = tiny_gpt2(seed=0, n_embd=16), tiny_gpt2(seed=1)
    before_student, before_teacher = state(student), state(teacher)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=2, load_best_model_at_end=False),
        train_dataset=lm_dataset(16),
        eval_dataset=lm_dataset(8, seed=1),
        data_collator=pad_collator,
    )
    trainer.train()

    assert trainer.teacher_model is teacher
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, tensor in state(teacher).items():
        assert torch.equal(tensor, before_teacher[name]), name
    assert any(not torch.equal(t, before_student[n]) for n, t in state(student).items())
    teacher_params = {id(p) for p in teacher.parameters()}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not teacher_params & optimised

    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert train_logs and all({"kd_loss", "ce_loss"} <= log.keys() for log in train_logs)
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert eval_logs and all({"eval_kd_loss", "eval_ce_loss"} <= log.keys() for log in eval_logs)
    first = train_logs[0]
    assert first["loss"] == pytest.approx(0.5 * first["kd_loss"] + 0.5 * first["ce_loss"], rel=1e-3)


def test_causal_lm_loss_shifts_labels(tmp_path: Path) -> None:
    """The trainer's loss equals distillation_loss on logits[:, :-1] against labels[:, 1:]."""
    from hf_enhance import distillation_loss

    student, teacher = tiny_gpt2(seed=0), tiny_gpt2(seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, alpha=0.3, temperature=1.5)
    )
    batch = pad_collator(list(lm_dataset(4)))
    loss = trainer.compute_loss(student, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = distillation_loss(
        student(**inputs).logits[:, :-1],
        teacher(**inputs).logits[:, :-1],
        batch["labels"][:, 1:],
        alpha=0.3,
        temperature=1.5,
    ).loss
    torch.testing.assert_close(loss, expected)


def _one_step_update(tmp_path: Path, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    student, teacher = tiny_gpt2(seed=0), tiny_gpt2(seed=1)
    before = state(student)
    args = make_args(
        tmp_path / f"{batch_size}x{accumulation}",
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=1.0,
        **PLAIN_SGD,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(8),
        data_collator=pad_collator,
    )
    trainer.train()
    return {name: before[name] - tensor for name, tensor in state(student).items()}


def test_gradient_accumulation_matches_the_larger_batch(tmp_path: Path) -> None:
    """8 sequences of different lengths: one batch of 8 and 4 accumulated batches of 2 give the same step."""
    full = _one_step_update(tmp_path, batch_size=8, accumulation=1)
    accumulated = _one_step_update(tmp_path, batch_size=2, accumulation=4)
    assert max(t.abs().max().item() for t in full.values()) > 0
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-5, atol=1e-5, msg=name)


def test_checkpoint_holds_no_teacher_and_resume_continues(tmp_path: Path) -> None:
    args = make_args(tmp_path, save_strategy="steps", save_steps=2, save_total_limit=None)
    student, teacher = tiny_gpt2(seed=0, n_embd=16), tiny_gpt2(seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(16),
        data_collator=pad_collator,
    )
    trainer.train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    student_shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    teacher_only = {tuple(v.shape) for v in teacher.state_dict().values()} - set(student_shapes.values())
    assert teacher_only, "the test needs teacher tensors of shapes the student lacks"
    assert not {tuple(v.shape) for v in saved.values()} & teacher_only
    assert all(not name.startswith("teacher") for name in saved)
    files = {f.name for f in checkpoint.iterdir()}
    assert not any("teacher" in f for f in files)

    resumed = DistillationTrainer(
        model=tiny_gpt2(seed=5, n_embd=16),
        teacher_model=tiny_gpt2(seed=1),
        args=args,
        train_dataset=lm_dataset(16),
        data_collator=pad_collator,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    final = {k: v for k, v in resumed.model.state_dict().items()}
    for name, tensor in student.state_dict().items():
        torch.testing.assert_close(final[name], tensor, msg=name)


def test_classification_with_bert_teacher_and_gru_student(tmp_path: Path) -> None:
    teacher, student = tiny_bert_classifier(seed=1), GRUClassifier()
    before = state(student)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=4, load_best_model_at_end=False),
        train_dataset=classification_dataset(16),
        eval_dataset=classification_dataset(8, seed=1),
        data_collator=pad_collator,
    )
    trainer.train()
    assert any(not torch.equal(t, before[n]) for n, t in state(student).items())
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_kd_loss", "eval_ce_loss"} <= metrics.keys()
    predictions = trainer.predict(classification_dataset(4, seed=2))
    assert predictions.predictions.shape == (4, 3)


def test_classification_loss_is_on_sequence_logits(tmp_path: Path) -> None:
    from hf_enhance import distillation_loss

    teacher, student = tiny_bert_classifier(seed=1), tiny_bert_classifier(seed=0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))
    assert trainer.distillation_task == "classification"
    batch = pad_collator(list(classification_dataset(4)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = distillation_loss(student(**inputs).logits, teacher(**inputs).logits, batch["labels"]).loss
    torch.testing.assert_close(trainer.compute_loss(student, batch), expected)


def test_peft_student_trains_only_adapters(tmp_path: Path) -> None:
    base = tiny_gpt2(seed=0)
    student = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(tmp_path, save_strategy="steps", save_steps=4),
        train_dataset=lm_dataset(16),
        data_collator=pad_collator,
    )
    trainer.train()
    after = dict(student.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in lora_before.items())
    assert all(torch.equal(after[n], p) for n, p in frozen_before.items())
    assert (Path(trainer.args.output_dir) / "checkpoint-4" / "adapter_model.safetensors").exists()


def test_bf16_teacher_with_fp32_student(tmp_path: Path) -> None:
    teacher = tiny_gpt2(seed=1).to(torch.bfloat16)
    student = tiny_gpt2(seed=0)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path),
        train_dataset=lm_dataset(16),
        data_collator=pad_collator,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert next(student.parameters()).dtype == torch.float32


def test_teacher_from_path_is_loaded_in_student_dtype(tmp_path: Path) -> None:
    path = tmp_path / "teacher"
    tiny_gpt2(seed=1).save_pretrained(path)
    trainer = DistillationTrainer(model=tiny_gpt2(seed=0), teacher_model=str(path), args=make_args(tmp_path))
    teacher = trainer.teacher_model
    assert type(teacher).__name__ == "GPT2LMHeadModel"
    assert next(teacher.parameters()).dtype == torch.float32
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    bf16 = DistillationTrainer(
        model=tiny_gpt2(seed=0),
        teacher_model=str(path),
        args=make_args(tmp_path, teacher_model_init_kwargs='{"dtype": "bfloat16"}'),
    )
    assert next(bf16.teacher_model.parameters()).dtype == torch.bfloat16


def test_padded_vocabulary_with_shared_tokenizer_is_compared_on_shared_columns(tmp_path: Path) -> None:
    class Tokenizer:
        def __len__(self) -> int:
            return 97

    with pytest.warns(UserWarning, match="embedding padding"):
        trainer = DistillationTrainer(
            model=tiny_gpt2(seed=0, vocab_size=97),
            teacher_model=tiny_gpt2(seed=1, vocab_size=104),
            args=make_args(tmp_path),
            processing_class=Tokenizer(),
        )
    batch = pad_collator(list(lm_dataset(2)))
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def test_vocabulary_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Teacher vocabulary size .* is 104 but the student's is 97"):
        DistillationTrainer(
            model=tiny_gpt2(seed=0, vocab_size=97),
            teacher_model=tiny_gpt2(vocab_size=104),
            args=make_args(tmp_path),
        )


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Teacher number of labels is 2 but the student's is 3"):
        DistillationTrainer(
            model=tiny_bert_classifier(num_labels=3),
            teacher_model=tiny_bert_classifier(num_labels=2),
            args=make_args(tmp_path),
        )


def test_plain_module_size_mismatch_is_refused_before_backward(tmp_path: Path) -> None:
    student = GRUClassifier(num_labels=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=tiny_bert_classifier(num_labels=3), args=make_args(tmp_path)
    )
    with pytest.raises(ValueError, match="number of labels is 3 but the student's is 2"):
        trainer.compute_loss(student, pad_collator(list(classification_dataset(2))))


def test_same_model_as_teacher_is_refused(tmp_path: Path) -> None:
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="same object as model"):
        DistillationTrainer(model=model, teacher_model=model, args=make_args(tmp_path))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"alpha": 1.2}, "alpha=1.2 is outside"),
        ({"temperature": 0.0}, "temperature=0.0 must be"),
        ({"distillation_loss": "kl"}, "Valid choices: forward_kl, reverse_kl, jsd"),
        ({"distillation_task": "seq2seq"}, "Valid choices: auto, causal_lm"),
        ({"teacher_model_init_kwargs": "{bad"}, "not valid JSON"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_missing_labels_with_alpha_below_one(tmp_path: Path) -> None:
    trainer = DistillationTrainer(
        model=tiny_gpt2(), teacher_model=tiny_gpt2(seed=1), args=make_args(tmp_path)
    )
    batch = {"input_ids": torch.randint(1, 97, (2, 6))}
    with pytest.raises(ValueError, match="has no 'labels'"):
        trainer.compute_loss(trainer.model, batch)
    pure = DistillationTrainer(
        model=tiny_gpt2(), teacher_model=tiny_gpt2(seed=1), args=make_args(tmp_path, alpha=1.0)
    )
    assert torch.isfinite(pure.compute_loss(pure.model, batch))


def test_plain_trainer_arguments_are_refused(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="needs DistillationTrainingArguments"):
        DistillationTrainer(
            model=tiny_gpt2(),
            teacher_model=tiny_gpt2(seed=1),
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
        )


def test_teacher_is_deep_copy_safe(tmp_path: Path) -> None:
    """A deep copy of the student is a valid (separate) teacher and starts with kd_loss 0."""
    student = tiny_gpt2()
    trainer = DistillationTrainer(
        model=student, teacher_model=copy.deepcopy(student), args=make_args(tmp_path, alpha=1.0)
    )
    loss = trainer.compute_loss(student, pad_collator(list(lm_dataset(2))))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_gets_the_enhanced_defaults(tmp_path: Path) -> None:
    """Epoch evaluation, best checkpoint at the end, early stopping: no settings needed."""
    from hf_enhance.training import EarlyStopping

    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    assert (args.eval_strategy, args.save_strategy, args.load_best_model_at_end) == ("epoch", "epoch", True)
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0),
        teacher_model=tiny_gpt2(seed=1),
        args=args,
        train_dataset=lm_dataset(8),
        eval_dataset=lm_dataset(4, seed=1),
        data_collator=pad_collator,
    )
    assert any(isinstance(cb, EarlyStopping) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(evals) == 2 and all("eval_kd_loss" in log for log in evals)
    assert trainer.state.best_model_checkpoint is not None


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_fused_training_step_equals_logit_training_step(tmp_path: Path, kind: str) -> None:
    """The chunked hidden-state objective gives the same update as the one on materialised logits."""
    updates = {}
    for fused in (True, False):
        student, teacher = tiny_gpt2(seed=0), tiny_gpt2(seed=1, n_embd=48)
        before = state(student)
        args = make_args(
            tmp_path / str(fused),
            max_steps=1,
            per_device_train_batch_size=8,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            fused_loss=fused,
            fused_chunk_size=7,
            distillation_loss=kind,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=lm_dataset(8),
            data_collator=pad_collator,
        )
        trainer.train()
        assert trainer._fused is fused
        updates[fused] = {name: before[name] - tensor for name, tensor in state(student).items()}
    for name in updates[True]:
        torch.testing.assert_close(updates[True][name], updates[False][name], rtol=1e-5, atol=1e-6, msg=name)


def test_fused_falls_back_with_a_warning_for_an_adapted_head(tmp_path: Path, caplog) -> None:
    student = get_peft_model(tiny_gpt2(seed=0), LoraConfig(r=2, target_modules=["c_attn", "lm_head"]))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(tmp_path, max_steps=1, fused_chunk_size=4),
        train_dataset=lm_dataset(4),
        data_collator=pad_collator,
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer._fused is False
    assert "distilling on materialised logits instead" in caplog.text


def test_fused_objective_runs_under_bf16_autocast(tmp_path: Path) -> None:
    """accelerate wraps the forward in autocast: its float32 logits carry bf16 rounding, still the fused path."""
    student = tiny_gpt2(seed=0)
    with torch.no_grad():
        student.transformer.wte.weight.mul_(30)  # large logits (tied head): bf16 rounding well above 1e-2
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(tmp_path, max_steps=1, fused_chunk_size=4, bf16=True),
        train_dataset=lm_dataset(4),
        data_collator=pad_collator,
    )
    trainer.train()
    assert trainer._fused is True
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_micro_batches_within_one_chunk_use_the_logits(tmp_path: Path) -> None:
    """Chunking a batch that fits in one chunk would only add the [V, H] gradient buffer: logits are used."""
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0),
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(tmp_path, max_steps=1, fused_chunk_size=10_000),
        train_dataset=lm_dataset(4),
        data_collator=pad_collator,
    )
    trainer.train()
    assert trainer._fused is None


def test_cached_teacher_with_full_support_trains_like_the_online_teacher(tmp_path: Path) -> None:
    """top_k = V makes the sparse loss exact: the step equals the online teacher's step."""
    from hf_enhance import cache_teacher_logits

    teacher, train = tiny_gpt2(seed=1), lm_dataset(8)
    cache = cache_teacher_logits(
        teacher, train, output_dir=tmp_path / "cache", top_k=97, logprob_dtype="float32", show_progress=False
    )
    updates = {}
    for mode in ("online", "cached"):
        student = tiny_gpt2(seed=0)
        before = state(student)
        args = make_args(
            tmp_path / mode,
            max_steps=1,
            per_device_train_batch_size=8,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            fused_loss=False,
        )
        teacher_source = {"teacher_model": teacher} if mode == "online" else {"teacher_cache": cache}
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=train, data_collator=pad_collator, **teacher_source
        )
        trainer.train()
        updates[mode] = {name: before[name] - tensor for name, tensor in state(student).items()}
    for name in updates["online"]:
        torch.testing.assert_close(updates["cached"][name], updates["online"][name], rtol=1e-4, atol=1e-6)


def test_teacher_cache_misuse_is_refused(tmp_path: Path) -> None:
    from hf_enhance import cache_teacher_logits

    train = lm_dataset(4)
    cache = cache_teacher_logits(
        tiny_gpt2(seed=1), train, output_dir=tmp_path / "c", top_k=4, show_progress=False
    )
    common = {"model": tiny_gpt2(), "args": make_args(tmp_path), "data_collator": pad_collator}
    with pytest.raises(ValueError, match=r"needs model= .* and a teacher"):
        DistillationTrainer(train_dataset=train, **common)
    with pytest.raises(ValueError, match="without eval_teacher_cache"):
        DistillationTrainer(teacher_cache=cache, train_dataset=train, eval_dataset=lm_dataset(2), **common)
    with pytest.raises(ValueError, match="CachedTeacher"):
        DistillationTrainer(
            model=tiny_bert_classifier(), teacher_cache=cache, args=make_args(tmp_path), train_dataset=train
        )
    with pytest.raises(ValueError, match="other tokens than the row"):
        DistillationTrainer(teacher_cache=cache, train_dataset=lm_dataset(4, seed=9), **common)


@pytest.mark.parametrize("hidden_weight", [0.0, 0.5])
def test_logged_components_add_up_to_the_loss_under_accumulation(
    tmp_path: Path, hidden_weight: float
) -> None:
    """Micro-batches of different token counts: components weighted like the loss, not plain means."""
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0),
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(
            tmp_path,
            max_steps=4,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=3,
            logging_steps=2,
            alpha=0.3,
            hidden_weight=hidden_weight,
            fused_loss=False,
        ),
        train_dataset=lm_dataset(12, min_len=2, max_len=40),
        data_collator=pad_collator,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    for log in logs:
        total = 0.3 * log["kd_loss"] + 0.7 * log["ce_loss"] + hidden_weight * log.get("hidden_loss", 0.0)
        assert total == pytest.approx(log["loss"], rel=2e-4)


def test_teachers_that_cannot_serve_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = tiny_gpt2(seed=0)
    common = {"args": make_args(tmp_path), "train_dataset": lm_dataset(4), "data_collator": pad_collator}
    with pytest.raises(TypeError, match="teacher_model is a dict, not a model"):
        DistillationTrainer(model=student, teacher_model={"weights": 1}, **common)
    with torch.device("meta"):
        meta_teacher = tiny_gpt2(seed=1)
    with pytest.raises(ValueError, match="on the meta device"):
        DistillationTrainer(model=student, teacher_model=meta_teacher, **common)
    sharing = tiny_gpt2(seed=1)
    sharing.transformer.wte = student.transformer.wte  # the teacher borrows the student's embeddings
    with pytest.raises(
        ValueError, match=r"shares .* parameter\(s\) with the student .*transformer\.wte\.weight"
    ):
        DistillationTrainer(model=student, teacher_model=sharing, **common)
    assert student.transformer.wte.weight.requires_grad  # refused before anything was frozen
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        OSError, match=r"(?s)Could not load the teacher 'no-such-org/no-such-model'.*HF_HUB_OFFLINE"
    ):
        DistillationTrainer(model=student, teacher_model="no-such-org/no-such-model", **common)
