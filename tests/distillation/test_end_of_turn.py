"""Where an answer ends: generation-config EOS lists, the tokenizer's EOS and the chat template's end of turn."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_enhance import DistillationTrainer, PromptCompletionCollator
from hf_enhance.distillation.terms.prompts import completion_batch, end_of_turn_id, stop_token_ids
from tests.examples.tiny_lm import tiny_tokenizer
from tests.tiny import distillation_args

TURN_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat() -> PreTrainedTokenizerFast:
    """A tokenizer whose EOS is <|endoftext|> and whose chat template ends a turn with <|im_end|>."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", TURN_END]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def gpt2(
    tokenizer: PreTrainedTokenizerFast, seed: int, eos: int | list[int] | None = None
) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id if eos is None else eos
    return model


def test_the_end_of_turn_is_read_off_the_chat_template(chat: PreTrainedTokenizerFast) -> None:
    assert end_of_turn_id(chat) == chat.convert_tokens_to_ids(TURN_END)
    assert end_of_turn_id(tiny_tokenizer()) is None  # no chat template


def test_the_stop_ids_are_every_models_eos_list_the_tokenizers_eos_and_the_turn_end(
    chat: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    turn_end = chat.convert_tokens_to_ids(TURN_END)
    student, teacher = gpt2(chat, 0, eos=[turn_end, 7]), gpt2(chat, 1, eos=turn_end)
    with caplog.at_level(logging.WARNING):
        stops = stop_token_ids(chat, student, teacher)
    assert stops == [turn_end, 7, chat.eos_token_id]
    assert "is not among GPT2LMHeadModel's generation-config EOS ids" in caplog.text  # they disagree


def test_labels_end_at_the_first_of_any_stop_id() -> None:
    completion = torch.tensor([[5, 8, 6, 9], [5, 9, 5, 8], [5, 5, 5, 5]])
    batch = completion_batch(torch.tensor([[1], [1], [1]]), torch.ones(3, 1), completion, torch.ones_like(completion),
                             [8, 9], pad_token_id=0)  # fmt: skip
    assert batch["labels"][:, 1:].tolist() == [[5, 8, -100, -100], [5, 9, -100, -100], [5, 5, 5, 5]]


def test_chat_completions_end_with_the_turn_end_and_text_completions_with_eos(
    chat: PreTrainedTokenizerFast,
) -> None:
    messages = [{"role": "user", "content": "The sea"}, {"role": "assistant", "content": " is blue"}]
    answer = chat(" is blue", add_special_tokens=False)["input_ids"]
    collator = PromptCompletionCollator(chat)
    for row, end in (
        ({"messages": messages}, TURN_END),
        ({"prompt": "The sea", "completion": " is blue"}, None),
    ):
        labels = collator([row])["labels"][0]
        assert labels[labels != -100].tolist() == [*answer, chat.convert_tokens_to_ids(end or chat.eos_token)]
    chosen = PromptCompletionCollator(chat, end_token_id=7)([{"messages": messages}])["labels"][0]
    assert chosen[chosen != -100].tolist()[-1] == 7


@pytest.mark.parametrize(
    "messages",
    [["Hi", "Hello"], [{"role": "user", "content": "Hi"}, {"role": "assistant"}]],
)
def test_malformed_messages_are_refused_with_the_expected_shape(
    chat: PreTrainedTokenizerFast, messages
) -> None:
    with pytest.raises(ValueError, match="must be a dict with 'role' and 'content'"):
        PromptCompletionCollator(chat)([{"messages": messages}])


def test_generation_stops_at_the_models_own_eos_not_only_the_tokenizers(
    chat: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """The student's greedy first token is declared its end of turn: every generated answer is that one token."""
    student = gpt2(chat, 0)
    prompt = chat("The sea")["input_ids"]
    with torch.no_grad():
        first = int(student(torch.tensor([prompt])).logits[0, -1].argmax())
    student.generation_config.eos_token_id = [first]
    trainer = DistillationTrainer(
        model=student, teacher_model=gpt2(chat, 1),
        args=distillation_args(tmp_path, lmbda=1.0, generation_temperature=0.0, max_new_tokens=6, max_steps=1,
                               per_device_train_batch_size=1),
        train_dataset=Dataset.from_dict({"prompt": ["The sea"], "completion": [" is blue"]}), processing_class=chat,
    )  # fmt: skip
    batch = PromptCompletionCollator(chat)([{"prompt": "The sea", "completion": " is blue"}])
    generated = trainer.on_policy.generate(trainer.model, batch)
    labels = generated["labels"][0]
    assert labels[labels != -100].tolist() == [first]


def test_the_saved_student_keeps_its_end_of_turn(chat: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    """Trainer writes the tokenizer's EOS into the model's configs before training; the student keeps its own."""
    turn_end = chat.convert_tokens_to_ids(TURN_END)
    student = gpt2(chat, 0, eos=turn_end)
    student.config.eos_token_id = turn_end
    trainer = DistillationTrainer(
        model=student, teacher_model=gpt2(chat, 1, eos=turn_end), args=distillation_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": ["The sea"] * 4, "completion": [" is blue"] * 4}),
        processing_class=chat,
    )  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    saved = GPT2LMHeadModel.from_pretrained(tmp_path / "student")
    assert saved.config.eos_token_id == turn_end
    assert saved.generation_config.eos_token_id == turn_end
