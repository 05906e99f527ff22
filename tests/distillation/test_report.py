"""teacher_student_report: held-out perplexity, agreement and the teacher's grading of each model's answers."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from hf_enhance.distillation import grade_own_answers, teacher_student_report
from tests.distillation.test_on_policy import gpt2, prompt_completion_rows
from tests.examples.tiny_lm import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def test_a_model_against_itself_agrees_fully_and_scores_the_same(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    teacher = gpt2(tokenizer, 1)
    report = teacher_student_report(teacher, copy.deepcopy(teacher), tokenizer, prompt_completion_rows(),
                                    max_new_tokens=5, batch_size=4)  # fmt: skip
    assert report.top1_agreement == 1.0
    assert report.student.perplexity == pytest.approx(report.teacher.perplexity, rel=1e-6)
    # Same seed and settings: both answer with the same random stream, so the same text and the same grade.
    assert report.student.teacher_nll_of_own_answers == pytest.approx(
        report.teacher.teacher_nll_of_own_answers
    )
    assert report.student.answer_length == report.teacher.answer_length
    assert 1 <= report.teacher.answer_length <= 5 and report.teacher.tokens_per_second > 0
    assert report.held_out_rows == 6


def test_the_measures_are_what_they_say(tokenizer: PreTrainedTokenizerFast) -> None:
    teacher, student = gpt2(tokenizer, 1), gpt2(tokenizer, 2)
    rows = Dataset.from_dict({"prompt": ["The sea is"], "completion": [" blue and wide"]})
    state = torch.random.get_rng_state()
    report = teacher_student_report(teacher, student, tokenizer, rows, max_new_tokens=4, temperature=0.0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    prompt = tokenizer("The sea is")["input_ids"]
    completion = [*tokenizer(" blue and wide", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = {
            name: model(ids).logits[0, len(prompt) - 1 : -1]
            for name, model in (("t", teacher), ("s", student))
        }
    target = torch.tensor(completion)
    assert report.completion_tokens == len(completion)
    assert report.teacher.perplexity == pytest.approx(
        math.exp(torch.nn.functional.cross_entropy(logits["t"], target)), rel=1e-5
    )
    assert report.student.perplexity == pytest.approx(
        math.exp(torch.nn.functional.cross_entropy(logits["s"], target)), rel=1e-5
    )
    agreement = (logits["t"].argmax(-1) == logits["s"].argmax(-1)).float().mean().item()
    assert report.top1_agreement == pytest.approx(agreement)
    # Greedy answers: the student's, graded by the teacher.
    answer = student.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False,
                              pad_token_id=tokenizer.eos_token_id)[0, len(prompt) :].tolist()  # fmt: skip
    if tokenizer.eos_token_id in answer:
        answer = answer[: answer.index(tokenizer.eos_token_id) + 1]
    with torch.no_grad():
        graded = teacher(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
    nll = torch.nn.functional.cross_entropy(graded, torch.tensor(answer)).item()
    assert report.student.teacher_nll_of_own_answers == pytest.approx(nll, rel=1e-5)
    assert report.student.answer_length == len(answer)


def test_the_report_is_saved_as_json_and_a_plot(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    report = teacher_student_report(gpt2(tokenizer, 1), gpt2(tokenizer, 2), tokenizer, prompt_completion_rows(),
                                    max_new_tokens=3, output_dir=tmp_path)  # fmt: skip
    saved = json.loads((tmp_path / "teacher_student_report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert set(saved["student"]) == {"parameters", "perplexity", "teacher_nll_of_own_answers", "answer_length",
                                     "tokens_per_second", "entropy_of_own_answers",
                                     "reverse_kl_of_own_answers"}  # fmt: skip
    assert (tmp_path / "teacher_student_report.png").stat().st_size > 1000


def test_entropy_reverse_kl_and_draft_acceptance_are_exact(tokenizer: PreTrainedTokenizerFast) -> None:
    """Greedy answers of one row, recomputed by hand: the model's entropy and KL(model || teacher) per token on its
    own answer, and the share of the teacher's greedy tokens the student predicts greedily."""
    teacher, student = gpt2(tokenizer, 1), gpt2(tokenizer, 2)
    rows = Dataset.from_dict({"prompt": ["The sea is"], "completion": [" blue"]})
    report = teacher_student_report(teacher, student, tokenizer, rows, max_new_tokens=5, temperature=0.0,
                                    draft_rows=1)  # fmt: skip
    prompt = tokenizer("The sea is")["input_ids"]
    eos = tokenizer.eos_token_id

    def greedy(model: torch.nn.Module) -> list[int]:
        answer = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, pad_token_id=eos,
                                eos_token_id=eos)[0, len(prompt):].tolist()  # fmt: skip
        return answer[: answer.index(eos) + 1] if eos in answer else answer

    def distributions(model: torch.nn.Module, answer: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        return torch.log_softmax(logits.double(), -1)

    answer = greedy(student)
    own, graded = distributions(student, answer), distributions(teacher, answer)
    entropy = -(own.exp() * own).sum(-1).mean().item()
    reverse_kl = (own.exp() * (own - graded)).sum(-1).mean().item()
    assert report.student.entropy_of_own_answers == pytest.approx(entropy, rel=1e-4)
    assert report.student.reverse_kl_of_own_answers == pytest.approx(reverse_kl, rel=1e-4)
    assert report.teacher.reverse_kl_of_own_answers == 0.0
    teacher_answer = greedy(teacher)
    drafts = distributions(student, teacher_answer).argmax(-1).tolist()
    accepted = sum(d == t for d, t in zip(drafts, teacher_answer, strict=True)) / len(teacher_answer)
    assert report.draft_acceptance == pytest.approx(accepted)
    assert report.assisted["rows"] == 1 and report.assisted["identical_output"] is True
    assert report.assisted["speedup"] > 0


@pytest.mark.parametrize(("rows", "fields", "message"), [
    ([], {}, "rows is empty"),
    (None, {"max_new_tokens": 0}, "max_new_tokens=0 must be an int >= 1"),
    (None, {"temperature": -1.0}, "temperature=-1.0 must be a finite number >= 0"),
    (None, {"temperature": float("nan")}, "temperature=nan must be a finite number >= 0"),
    (None, {"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
    (None, {"draft_rows": -1}, "draft_rows=-1 must be an int >= 0"),
    ([{"text": "no prompt"}], {}, "neither 'prompt' and 'completion' nor 'messages'"),
])  # fmt: skip
def test_bad_input_is_refused_before_any_work(
    tokenizer: PreTrainedTokenizerFast, rows: Any, fields: dict[str, Any], message: str
) -> None:
    rows = prompt_completion_rows() if rows is None else rows
    with pytest.raises(ValueError, match=message):
        teacher_student_report(gpt2(tokenizer, 1), gpt2(tokenizer, 2), tokenizer, rows, **fields)


def test_grading_one_model_equals_its_side_of_the_report(tokenizer: PreTrainedTokenizerFast) -> None:
    teacher, student = gpt2(tokenizer, 1), gpt2(tokenizer, 2)
    settings = {"max_new_tokens": 5, "batch_size": 4, "seed": 7}
    report = teacher_student_report(
        teacher, student, tokenizer, prompt_completion_rows(), draft_rows=0, **settings
    )
    graded = grade_own_answers(student, teacher, tokenizer, prompt_completion_rows(), **settings)
    for name in ("teacher_nll_of_own_answers", "entropy_of_own_answers", "reverse_kl_of_own_answers"):
        assert graded[name] == pytest.approx(getattr(report.student, name), rel=1e-6)
    assert graded["answer_length"] == report.student.answer_length
    other_seed = grade_own_answers(
        student, teacher, tokenizer, prompt_completion_rows(), **{**settings, "seed": 8}
    )
    assert other_seed["teacher_nll_of_own_answers"] != graded["teacher_nll_of_own_answers"]
    with pytest.raises(ValueError, match="rows is empty"):
        grade_own_answers(student, teacher, tokenizer, [], **settings)
