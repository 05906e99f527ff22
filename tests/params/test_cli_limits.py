"""The command line never prints a traceback or hangs: impossible configs and absurd numbers get a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config

from hf_enhance.cli import main
from hf_enhance.params import count_parameters

BASE = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}


@pytest.mark.parametrize(("change", "message"), [
    ({"n_embd": 0}, r"n_embd=0 \(a whole number from 1"),
    ({"vocab_size": -5}, r"vocab_size=-5 \(a whole number from 1"),
    ({"n_head": 5}, "5 attention heads do not divide the width 64"),
    ({"n_layer": 200_000}, r"n_layer=200000 \(a whole number from 1 to 10,000\)"),
])  # fmt: skip
def test_a_config_no_model_can_have_is_refused_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, message: str
) -> None:
    GPT2Config(**{**BASE, **change}).save_pretrained(tmp_path)
    assert main(["params", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot describe a model" in err and "Traceback" not in err and "not checked yet" not in err
    with pytest.raises(ValueError, match=message):
        count_parameters(GPT2Config(**{**BASE, **change}))


@pytest.mark.parametrize(("argv", "message"), [
    (["plan", "--teacher", "gpt2", "--student", "gpt2", "--gpus", "1", "--gpu-memory", "1e308"],
     "gpu_memory_gib=1e+308 must be a positive, finite number of GiB (at most 1,000,000)"),
    (["plan", "--teacher", "gpt2", "--student", "gpt2", "--gpus", str(10**29)],
     "is beyond any real run (at most 1,000,000 here)"),
    (["params", "gpt2", "-r", str(10**20)], "exceeds the smaller dimension (768) of every linear layer"),
    (["params", "gpt2", "--preset", "attention", "-r", "10000"], "exceeds the smaller dimension of every module"),
])  # fmt: skip
def test_absurd_numbers_are_refused_with_their_range(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "not checked yet" not in err and "Traceback" not in err


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`hf-enhance params ... | head -1`: the reader is gone before the table is written."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hf_enhance.cli import main; sys.exit(main(sys.argv[1:]))",
         "params", "gpt2", "--modules"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_one_gpu_is_one_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--teacher", "gpt2", "--student", "distilgpt2", "--gpus", "1"]) == 0
    assert " on 1 GPU x " in capsys.readouterr().out
