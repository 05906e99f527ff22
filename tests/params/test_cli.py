"""hf-enhance params / python -m hf_enhance.params."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from hf_enhance.cli import main
from tests.lora.tiny import tiny_config


def test_70b_all_linear_r16(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-2-70b", "--preset", "all-linear", "-r", "16"]) == 0
    out = capsys.readouterr().out
    assert (
        "llama-2-70b (LlamaForCausalLM) · lora · preset=all-linear · r=16" not in out
    )  # zoo name is the title
    assert "trainable 207,093,760 of 69,183,741,952 parameters (0.299%)" in out
    assert "model.layers.*.mlp.down_proj" in out and "qlora" in out


def test_json_output_on_a_local_config(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_config("llama").save_pretrained(tmp_path)
    assert main(["params", str(tmp_path), "--method", "full", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "full" and result["trainable"] == result["total"] > 0
    assert set(result["memory"]) == {"fp32", "bf16"}
    assert (
        result["memory"]["fp32"]["total"]
        == 16 * result["total"] + result["memory"]["fp32"]["weights"] - 4 * result["total"]
    )


def test_options_that_do_not_apply_are_errors(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_config("llama").save_pretrained(tmp_path)
    assert main(["params", str(tmp_path), "--method", "full", "-r", "4"]) == 2
    assert "['r'] do not apply to full fine-tuning" in capsys.readouterr().err


def test_unknown_model_is_an_error_listing_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-9-9b"]) == 2
    assert "not a model name in MODEL_ZOO" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llama-2-70b" in out and "68,976,648,192" in out and "attention-qv" in out and "prefix" in out


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hf_enhance.params", "gpt2-medium", "--target-modules", "c_proj", "-r", "4"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "trainable 688,128 of 355,511,296 parameters (0.194%)" in done.stdout


@pytest.mark.parametrize(
    "flags,message",
    [
        (["-r", "1000000000000"], r"LoRA rank r=1000000000000 exceeds the smaller dimension \(768\)"),
        (["--lora-alpha", "nan"], "lora_alpha=nan is not a finite number"),
        (["--lora-alpha", "inf"], "lora_alpha=inf is not a finite number"),
    ],
)
def test_impossible_lora_values_are_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["params", "gpt2", *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_an_unexpected_failure_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hf_enhance.params.cli as cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "count_parameters", broken)
    assert main(["params", "gpt2"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "HF_ENHANCE_DEBUG=1" in err
    monkeypatch.setenv("HF_ENHANCE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["params", "gpt2"])
