"""examples/draft_model.py end to end on a tiny teacher: a draft is built, trained off- then on-policy, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.examples.tiny_lm import PROMPTS, save_tiny_teacher  # isort: split

import draft_model

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def flags(teacher: Path, tmp_path: Path, **overrides: object) -> list[str]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    values: dict[str, object] = {
        "teacher": teacher, "prompts_file": prompts, "held_out_prompts": 2, "samples_per_prompt": 1,
        "draft_layers": 1, "off_policy_steps": 2, "on_policy_steps": 2, "max_new_tokens": 6, "report_rows": 2,
        "per_device_train_batch_size": 2, "output_dir": tmp_path / "draft", "cache_dir": tmp_path / "cache",
        "use_cpu": True, "disable_tqdm": True,
    }  # fmt: skip
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.mark.parametrize("chat", [True, False], ids=["chat_template", "plain_prompts"])
def test_builds_trains_and_reports_a_draft(tmp_path: Path, chat: bool) -> None:
    teacher = save_tiny_teacher(tmp_path / "teacher")
    if chat:
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(teacher)
    results = draft_model.main(flags(teacher, tmp_path))
    names = [row["draft"] for row in results["rows"]]
    assert names == ["built, untrained", "off-policy 4 steps", "off-policy 2 + on-policy 2 steps"]
    for row in results["rows"]:
        assert 0 <= row["acceptance"] <= 1
        assert (
            row["identical_output"] is True
        )  # float32 assisted generation keeps the teacher's greedy output
        assert row["assisted_speedup"] > 0
    # The trained drafts moved away from the untrained one.
    assert len({row["reverse_kl_of_own_answers"] for row in results["rows"]}) == 3
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    assert saved.config.n_layer == 1
    assert results["draft_parameters"] < results["teacher_parameters"]
    assert json.loads((tmp_path / "draft" / "draft_report.json").read_text())["rows"] == results["rows"]


def test_too_few_prompts_is_refused_before_the_teacher_loads(tmp_path: Path) -> None:
    missing_teacher = tmp_path / "no_such_teacher"
    with pytest.raises(ValueError, match="held_out_prompts is 6"):
        draft_model.main(flags(missing_teacher, tmp_path, held_out_prompts=len(PROMPTS)))


def test_a_missing_prompts_file_is_refused_before_the_teacher_loads(tmp_path: Path) -> None:
    argv = flags(tmp_path / "no_such_teacher", tmp_path)
    argv[argv.index("--prompts_file") + 1] = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt does not exist"):
        draft_model.main(argv)
