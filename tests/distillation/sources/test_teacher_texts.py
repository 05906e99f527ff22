"""generate_teacher_texts: sampling, left-padded batches, seeding, chat templates, the disk cache, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GenerationMixin, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_enhance.distillation.sources.teacher_texts import (
    _settings,
    generate_teacher_texts,
    teacher_texts_cache_file,
)
from tests.examples.tiny_lm import tiny_tokenizer
from tests.tiny import tiny_gpt2

PROMPTS = ["The sea", "In the morning the fishermen", "A fox"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture
def teacher(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    return tiny_gpt2(seed=3, vocab_size=len(tokenizer)).eval()


def test_rows_follow_the_prompts_and_hold_only_the_continuation(
    teacher: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    texts = generate_teacher_texts(teacher, tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=6)
    assert texts.column_names == ["prompt", "text"]
    assert texts["prompt"] == [prompt for prompt in PROMPTS for _ in range(2)]
    assert all(isinstance(text, str) for text in texts["text"])
    assert len(set(texts["text"])) > 1


def test_batched_greedy_decoding_matches_one_prompt_at_a_time(
    teacher: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Prompts of different lengths share a left-padded batch without changing any continuation."""
    batched = generate_teacher_texts(
        teacher, tokenizer, PROMPTS, max_new_tokens=8, temperature=0, batch_size=3
    )
    for prompt, text in zip(PROMPTS, batched["text"], strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        alone = teacher.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
        assert text == tokenizer.decode(alone[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(
    teacher: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    torch.manual_seed(123)
    first = generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=8, seed=1)["text"]
    after_call = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_call)
    assert generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=8, seed=1)["text"] == first
    assert generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=8, seed=2)["text"] != first


def test_chat_template_wraps_each_prompt_as_a_user_turn(
    teacher: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    with pytest.raises(ValueError, match="no chat template"):
        generate_teacher_texts(teacher, tokenizer, PROMPTS, chat_template=True)
    templated = tiny_tokenizer()
    templated.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Teacher:"
    wrapped = generate_teacher_texts(teacher, templated, PROMPTS, max_new_tokens=6, temperature=0)
    by_hand = [f"User: {prompt}\nTeacher:" for prompt in PROMPTS]
    plain = generate_teacher_texts(
        teacher, templated, by_hand, max_new_tokens=6, temperature=0, chat_template=False
    )
    assert wrapped["text"] == plain["text"]
    assert wrapped["prompt"] == PROMPTS


def test_cache_is_reused_keyed_on_the_settings_and_refreshable(
    teacher: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    files = list((tmp_path / "teacher_texts").glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["records"] == first.to_list()

    real_generate = GenerationMixin.generate
    calls: list[int] = []

    def counting_generate(self: GenerationMixin, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counting_generate)
    again = generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    assert again.to_list() == first.to_list() and not calls

    generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=6, cache_dir=tmp_path)
    generate_teacher_texts(
        tiny_gpt2(seed=3, vocab_size=len(tokenizer), n_layer=3),
        tokenizer,
        PROMPTS,
        max_new_tokens=5,
        cache_dir=tmp_path,
    )
    assert len(calls) == 2 and len(list((tmp_path / "teacher_texts").glob("*.json"))) == 3

    generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path, refresh=True)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("prompts", "settings", "message"),
    [
        ([], {}, "non-empty list"),
        ("The sea", {}, "a single string"),
        (PROMPTS, {"samples_per_prompt": 0}, "must both be >= 1"),
        (PROMPTS, {"max_new_tokens": 0}, "must both be >= 1"),
        (PROMPTS, {"temperature": -1.0}, "must be >= 0"),
        (PROMPTS, {"top_p": 0.0}, r"in \(0, 1\]"),
        (PROMPTS, {"temperature": 0.0, "samples_per_prompt": 2}, "would be identical"),
        (["The sea", ""], {}, "tokenize to no tokens"),
    ],
)
def test_bad_input_fails_before_sampling(
    teacher: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    settings: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        generate_teacher_texts(teacher, tokenizer, prompts, **settings)


def test_a_damaged_cache_file_is_regenerated(
    teacher: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    (cache_file,) = (tmp_path / "teacher_texts").glob("*.json")
    cache_file.write_text(cache_file.read_text()[:30])
    with caplog.at_level("WARNING"):
        again = generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    assert "is damaged" in caplog.text
    assert again.to_list() == first.to_list()
    assert json.loads(cache_file.read_text())["records"] == first.to_list()


def _key(
    teacher: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: list[str], **generation: Any
) -> Path:
    settings = {"samples_per_prompt": 1, "max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "seed": 0}
    return teacher_texts_cache_file(
        "cache", _settings(teacher, tokenizer, prompts, {**settings, **generation})
    )


def test_the_cache_key_changes_with_everything_that_decides_the_texts(
    teacher: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    import hf_enhance

    base = _key(teacher, tokenizer, PROMPTS)
    assert (
        _key(tiny_gpt2(seed=3, vocab_size=len(tokenizer)).eval(), tokenizer, PROMPTS) == base
    )  # same weights
    changed = {
        "prompts": _key(teacher, tokenizer, PROMPTS[:2]),
        **{
            name: _key(teacher, tokenizer, PROMPTS, **{name: value})
            for name, value in [
                ("samples_per_prompt", 2),
                ("max_new_tokens", 6),
                ("temperature", 0.8),
                ("top_p", 0.9),
                ("seed", 1),
            ]
        },
    }
    other_vocab = copy.deepcopy(tokenizer)
    other_vocab.add_tokens(["zebra"])
    changed["tokenizer"] = _key(teacher, other_vocab, PROMPTS)
    for module, name in [(torch, "torch"), (transformers, "transformers"), (hf_enhance, "hf_enhance")]:
        with monkeypatch.context() as patch:
            patch.setattr(module, "__version__", "0.0.0-other")
            changed[name] = _key(teacher, tokenizer, PROMPTS)
    generation_config = teacher.generation_config
    teacher.generation_config = copy.deepcopy(generation_config)
    teacher.generation_config.repetition_penalty = 1.3
    changed["generation_config"] = _key(teacher, tokenizer, PROMPTS)
    teacher.generation_config = generation_config
    assert _key(teacher, tokenizer, PROMPTS) == base
    with torch.no_grad():  # one weight, nudged in place: same names, shapes and parameter count
        teacher.transformer.h[0].mlp.c_fc.weight[3, 5] += 1e-3
    changed["weights"] = _key(teacher, tokenizer, PROMPTS)
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_a_reused_cache_says_so_in_one_log_line(
    teacher: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    teacher.generation_config.suppress_tokens = (5, 6)  # a tuple: JSON reads it back as a list
    generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    (cache_file,) = (tmp_path / "teacher_texts").glob("*.json")
    with caplog.at_level("INFO", logger="hf_enhance.distillation.sources.teacher_texts"):
        generate_teacher_texts(teacher, tokenizer, PROMPTS, max_new_tokens=5, cache_dir=tmp_path)
    (line,) = [record.getMessage() for record in caplog.records if "Reusing" in record.getMessage()]
    assert str(cache_file) in line and "refresh=True" in line and "\n" not in line
