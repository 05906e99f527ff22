"""On-policy and mixed distillation: prompt/completion batches, generated completions, masking, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import GenerationMixin, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_enhance import DistillationTrainer, PromptCompletionCollator
from hf_enhance.distillation.terms.on_policy import completion_batch
from tests.examples.tiny_lm import tiny_tokenizer
from tests.tiny import distillation_args

PROMPTS = ["The sea is", "Rain falls", "A cat sat on", "Wind moves the", "Stars shine", "Trees grow"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def gpt2(tokenizer: PreTrainedTokenizerFast, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config)


def prompt_completion_rows() -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS, "completion": [" blue and wide", " on the hills"] * 3})


def test_rows_are_left_padded_prompts_then_completions_with_labels_on_the_completion(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    collator = PromptCompletionCollator(tokenizer)
    batch = collator(
        [{"prompt": "The sea is", "completion": " blue"}, {"prompt": "A cat sat on", "completion": " a mat"}]
    )
    eos = tokenizer.eos_token_id
    for row, (prompt, completion) in enumerate([("The sea is", " blue"), ("A cat sat on", " a mat")]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"], eos]
        width = batch["prompt_input_ids"].shape[1]
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == prompt_ids + completion_ids
        assert batch["prompt_input_ids"][row, width - len(prompt_ids) :].tolist() == prompt_ids  # left-padded
        assert batch["prompt_attention_mask"][row].sum() == len(prompt_ids)
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == completion_ids
        assert batch["position_ids"][row][mask].tolist() == list(range(len(prompt_ids) + len(completion_ids)))


def test_tokens_after_a_generated_eos_are_masked_and_the_eos_is_a_label() -> None:
    eos, pad = 9, 0
    prompt = torch.tensor([[0, 5, 6], [4, 5, 6]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion = torch.tensor([[7, 9, 8, 8], [7, 7, 7, 7]])  # row 0 stopped at its EOS; generation went on
    batch = completion_batch(prompt, prompt_mask, completion, torch.ones_like(completion), eos, pad)
    assert batch["labels"][:, 3:].tolist() == [[7, 9, -100, -100], [7, 7, 7, 7]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 0, 0], [1] * 7]
    assert batch["input_ids"][0, 5:].tolist() == [pad, pad]
    assert batch["position_ids"][0, 1:5].tolist() == [0, 1, 2, 3]


def _trainer(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, student: Any = None, **fields: Any
) -> DistillationTrainer:
    settings = {"max_steps": 3, "per_device_train_batch_size": 2, "max_new_tokens": 6, "logging_steps": 1,
                "fused_loss": False, "alpha": 0.5, **fields}  # fmt: skip
    return DistillationTrainer(
        model=student if student is not None else gpt2(tokenizer, 0),
        teacher_model=gpt2(tokenizer, 1),
        args=distillation_args(tmp_path, **settings),
        train_dataset=prompt_completion_rows(),
        data_collator=PromptCompletionCollator(tokenizer),
        processing_class=tokenizer,
    )


class GenerateSpy:
    """Counts generate() calls per model and records the step's token count seen by compute_loss."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.callers: list[int] = []
        real = GenerationMixin.generate

        def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.callers.append(id(model))
            return real(model, *args, **kwargs)

        monkeypatch.setattr(GenerationMixin, "generate", spy)


@pytest.mark.parametrize(("lmbda", "seq_kd", "who"), [(1.0, False, "student"), (0.0, True, "teacher")])
def test_generating_steps_sample_from_the_right_model_and_train(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lmbda: float, seq_kd: bool,
    who: str,
) -> None:  # fmt: skip
    spy = GenerateSpy(monkeypatch)
    trainer = _trainer(tokenizer, tmp_path, lmbda=lmbda, seq_kd=seq_kd)
    trainer.train()
    expected = id(trainer.model) if who == "student" else id(trainer.teacher_model)
    assert spy.callers == [expected] * 3  # one call per micro-batch, every step
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["on_policy_fraction"] for log in logs] == [lmbda] * 3
    assert all(1 <= log["completion_length"] <= 6 and log["generation_seconds"] > 0 for log in logs)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert trainer.model.training  # generation's eval mode was undone


def test_on_policy_steps_are_graded_by_the_teacher_alone(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """alpha < 1, yet on-policy steps log no ce_loss and their loss is the KD term."""
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, alpha=0.3)
    trainer.train()
    for log in (log for log in trainer.state.log_history if "loss" in log):
        assert "ce_loss" not in log
        assert log["loss"] == pytest.approx(log["kd_loss"], rel=1e-3)


def test_mixed_steps_follow_lmbda_and_agree_across_runs(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    fractions = []
    for run in range(2):
        trainer = _trainer(tokenizer, tmp_path / str(run), lmbda=0.5, max_steps=8, logging_steps=8)
        trainer.train()
        fractions.append(
            next(log for log in trainer.state.log_history if "loss" in log)["on_policy_fraction"]
        )
    assert fractions[0] == fractions[1]  # drawn from the seed and the step: every process, every rerun agrees
    assert 0.0 < fractions[0] < 1.0


def test_the_step_normaliser_counts_generated_completion_tokens(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, max_steps=2, gradient_accumulation_steps=2,
                       per_device_train_batch_size=1)  # fmt: skip
    real = trainer.compute_loss

    def counting(
        model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        seen.append((int((inputs["labels"][:, 1:] != -100).sum()), int(num_items_in_batch)))
        return real(model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(trainer, "compute_loss", counting)
    trainer.train()
    for step in range(2):
        micro = seen[2 * step : 2 * step + 2]
        assert (
            micro[0][1] == micro[1][1] == micro[0][0] + micro[1][0]
        )  # completion tokens of both micro-batches


def test_a_lora_student_generates_with_its_adapters(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    student = get_peft_model(
        gpt2(tokenizer, 0), LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False)
    )
    trainer = _trainer(
        tokenizer, tmp_path, student=student, lmbda=1.0, max_steps=1, gradient_checkpointing=True
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert student.base_model.model.is_gradient_checkpointing  # switched off for generation, then back on


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lmbda": 1.5}, r"lmbda=1\.5 must be a number in \[0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be an int >= 1"),
        ({"generation_top_p": 0.0}, r"generation_top_p=0\.0 must be in \(0, 1\]"),
        ({"generation_temperature": -1.0}, "generation_temperature=-1.0 must be a finite number >= 0"),
    ],
)
def test_bad_generation_settings_are_refused(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_args(tmp_path, **fields)


def test_on_policy_needs_prompts_and_a_causal_lm(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no 'prompt' .* or 'messages' column"):
        DistillationTrainer(
            model=gpt2(tokenizer, 0),
            teacher_model=gpt2(tokenizer, 1),
            args=distillation_args(tmp_path, lmbda=1.0),
            train_dataset=Dataset.from_dict({"text": ["a b"]}),
            processing_class=tokenizer,
        )
    from tests.tiny import tiny_bert_classifier

    with pytest.raises(ValueError, match="needs a causal LM student; this student is a classification model"):
        DistillationTrainer(
            model=tiny_bert_classifier(0),
            teacher_model=tiny_bert_classifier(1),
            args=distillation_args(tmp_path, lmbda=0.5),
            train_dataset=prompt_completion_rows(),
        )
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        PromptCompletionCollator(PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("fused", [False, True])
def test_the_objective_equals_trls_gkd_on_the_same_generated_sequences(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, beta: float, fused: bool
) -> None:
    """alpha = 1, T = 1: TRL's GKD loss (no T² factor, sum over completion tokens / their count) is ours."""
    gkd = pytest.importorskip("trl.experimental.gkd").GKDTrainer
    trainer = _trainer(tokenizer, tmp_path, lmbda=1.0, alpha=1.0, temperature=1.0, distillation_loss="jsd",
                       jsd_beta=beta, fused_loss=fused, fused_chunk_size=4)  # fmt: skip
    prompts = torch.tensor(
        [tokenizer(text)["input_ids"][:2] for text in ("The sea is", "Rain falls")]
    )  # no padding
    generated = trainer.on_policy.generate(
        trainer.model, {"prompt_input_ids": prompts, "prompt_attention_mask": torch.ones_like(prompts)}
    )
    assert trainer.model.training  # the fused objective runs in training steps; gpt2() has no dropout
    with torch.no_grad():
        ours = trainer.compute_loss(
            trainer.model, {k: v for k, v in generated.items() if k != "position_ids"}
        )
        student = trainer.model(
            input_ids=generated["input_ids"], attention_mask=generated["attention_mask"]
        ).logits
        teacher = trainer.teacher_model(
            input_ids=generated["input_ids"], attention_mask=generated["attention_mask"]
        ).logits
        theirs = gkd.generalized_jsd_loss(
            student[:, :-1], teacher[:, :-1], generated["labels"][:, 1:], beta=beta
        )
    assert bool(trainer._fused) == fused
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_chat_messages_use_the_chat_template_for_the_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = tiny_tokenizer()
    chat.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    messages = [{"role": "user", "content": "The sea is"}, {"role": "assistant", "content": " blue"}]
    batch = PromptCompletionCollator(chat)([{"messages": messages}])
    prompt = chat(chat.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False))[
        "input_ids"
    ]
    assert batch["prompt_input_ids"][0].tolist() == prompt
    labels = batch["labels"][0]
    assert labels[labels != -100].tolist() == [
        *chat(" blue", add_special_tokens=False)["input_ids"],
        chat.eos_token_id,
    ]
    with pytest.raises(ValueError, match="must end with the assistant's answer"):
        PromptCompletionCollator(chat)([{"messages": messages[:1]}])


def test_generating_needs_a_live_teacher(tmp_path: Path) -> None:
    from hf_enhance import cache_teacher_logits
    from tests.tiny import lm_dataset, tiny_gpt2

    cache = cache_teacher_logits(tiny_gpt2(seed=1), lm_dataset(4), output_dir=tmp_path / "cache", top_k=4)
    with pytest.raises(ValueError, match=r"need a live teacher .* only a teacher_cache"):
        DistillationTrainer(
            model=tiny_gpt2(seed=0),
            teacher_cache=cache,
            args=distillation_args(tmp_path, lmbda=1.0),
            train_dataset=lm_dataset(4),
        )


def test_training_forward_scores_generated_tokens_as_generation_did(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """Left-padded prompts: the logits of the training forward at each completion position are the ones the
    tokens were sampled from (same positions, same context), so the teacher grades what the student wrote."""
    student = gpt2(tokenizer, 0).eval()
    collator = PromptCompletionCollator(tokenizer)
    batch = collator(
        [{"prompt": "The sea is", "completion": ""}, {"prompt": "A cat sat on the", "completion": ""}]
    )
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    torch.manual_seed(0)
    with torch.no_grad():
        out = student.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=5, do_sample=True,
                               output_logits=True, return_dict_in_generate=True,
                               pad_token_id=collator.pad_token_id)  # fmt: skip
        completion = out.sequences[:, prompt_ids.shape[1] :]
        scored = completion_batch(prompt_ids, prompt_mask, completion, torch.ones_like(completion),
                                  tokenizer.eos_token_id, collator.pad_token_id)  # fmt: skip
        logits = student(input_ids=scored["input_ids"], attention_mask=scored["attention_mask"],
                         position_ids=scored["position_ids"]).logits  # fmt: skip
    width = prompt_ids.shape[1]
    for step, generated in enumerate(out.logits):
        kept = scored["labels"][:, width + step] != -100
        torch.testing.assert_close(logits[kept, width + step - 1], generated[kept], rtol=1e-4, atol=1e-4)


class TeacherForwardSpy:
    """Counts the teacher's forward calls (the live teacher grading a batch)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.calls = 0
        teacher.register_forward_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.calls += 1


def _cached_and_live(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, **fields: Any
) -> tuple[DistillationTrainer, TeacherForwardSpy]:
    from hf_enhance import cache_teacher_logits

    collator = PromptCompletionCollator(tokenizer)
    rows = collator.tokenize(prompt_completion_rows())
    teacher = gpt2(tokenizer, 1).eval()
    # k = V: the cache holds the teacher's whole distribution, so cached and live grading agree exactly.
    cache = cache_teacher_logits(teacher, rows, output_dir=tmp_path / "cache", top_k=len(tokenizer),
                                 logprob_dtype="float32", show_progress=False)  # fmt: skip
    spy = TeacherForwardSpy(teacher)
    settings = {"max_steps": 4, "per_device_train_batch_size": 2, "max_new_tokens": 5, "logging_steps": 1,
                "fused_loss": False, "alpha": 0.5, "eval_strategy": "steps", "eval_steps": 4,
                "load_best_model_at_end": False, **fields}  # fmt: skip
    trainer = DistillationTrainer(
        model=gpt2(tokenizer, 0), teacher_model=teacher, teacher_cache=cache,
        args=distillation_args(tmp_path / "run", **settings), train_dataset=rows,
        eval_dataset=prompt_completion_rows(), data_collator=collator, processing_class=tokenizer,
    )  # fmt: skip
    return trainer, spy


def test_off_policy_steps_read_the_cache_and_on_policy_steps_run_the_live_teacher(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate = GenerateSpy(monkeypatch)
    trainer, teacher = _cached_and_live(tokenizer, tmp_path, lmbda=0.5)
    on_policy = [trainer.on_policy.is_on_policy_step(step) for step in range(4)]
    assert 0 < sum(on_policy) < 4  # the seed mixes both kinds of step
    eval_batches = len(trainer.get_eval_dataloader())  # the eval set has no cache: the live teacher grades it
    trainer.train()
    assert teacher.calls == sum(on_policy) + eval_batches
    assert len(generate.callers) == sum(on_policy)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["on_policy_fraction"] for log in logs] == [float(step) for step in on_policy]
    assert all(("ce_loss" in log) != step for log, step in zip(logs, on_policy, strict=True))
    assert "eval_loss" in trainer.state.log_history[-2]


def test_a_full_cache_grades_off_policy_steps_as_the_live_teacher_does(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    cached, teacher = _cached_and_live(tokenizer, tmp_path, lmbda=0.0, max_steps=2, eval_strategy="no")
    cached.train()
    assert teacher.calls == 0
    live = _trainer(tokenizer, tmp_path / "live", max_steps=2, per_device_train_batch_size=2)
    live.train()
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (cached, live)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_cache_from_another_vocabulary_is_refused_next_to_a_live_teacher(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    from hf_enhance import cache_teacher_logits

    collator = PromptCompletionCollator(tokenizer)
    rows = collator.tokenize(prompt_completion_rows())
    cache = cache_teacher_logits(gpt2(tokenizer, 1), rows, output_dir=tmp_path / "cache", top_k=4,
                                 vocab_size=len(tokenizer) - 3, show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"cache holds distributions over \d+ token ids, but the live"):
        DistillationTrainer(model=gpt2(tokenizer, 0), teacher_model=gpt2(tokenizer, 1), teacher_cache=cache,
                            args=distillation_args(tmp_path, lmbda=0.5), train_dataset=rows,
                            data_collator=collator, processing_class=tokenizer)  # fmt: skip


def test_token_rows_are_collated_as_they_are(tokenizer: PreTrainedTokenizerFast) -> None:
    batch = PromptCompletionCollator(tokenizer)(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    )
    assert batch["input_ids"].tolist() == [
        [5, 6, 7],
        [8, 9, tokenizer.pad_token_id or tokenizer.eos_token_id],
    ]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert "prompt_input_ids" not in batch


def test_tokenize_gives_the_collated_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    collator = PromptCompletionCollator(tokenizer, max_completion_length=3)
    rows = collator.tokenize(prompt_completion_rows())
    batch = collator(list(prompt_completion_rows())[:2])
    for row in range(2):
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == rows[row]["input_ids"]
    with pytest.raises(ValueError, match="already has"):
        collator.tokenize(rows)


def test_two_processes_generate_and_train_like_one(tmp_path: Path) -> None:
    from tests.distillation.ddp_on_policy import train as ddp_train
    from tests.launch import torchrun_two_processes

    single = torchrun_two_processes(
        "tests.distillation.ddp_on_policy",
        str(tmp_path),
        timeout=180,
        meanwhile=lambda: ddp_train(tmp_path / "single", per_device_batch=4),  # the same run in one process
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    start = gpt2(tiny_tokenizer(), 0).state_dict()
    assert any(not torch.equal(start[name], tensor) for name, tensor in single.items())  # it trained
    for name, tensor in single.items():
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(ranks[1][name], ranks[0][name]), name
