"""Real SIGKILLs of a subprocess at several points of a write: nothing complete is lost, resume always works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_enhance.files import write_json_atomically
from hf_enhance.training.checkpoints import checkpoint_problem
from tests.faults.killed_run import make_trainer

REPO = Path(__file__).resolve().parents[2]


def run_killed(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.killed_run", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


@pytest.mark.parametrize("point", ["data", "sync"])
def test_a_killed_write_leaves_the_previous_file_whole(tmp_path: Path, point: str) -> None:
    path = tmp_path / "results.json"
    write_json_atomically(path, {"version": 1})
    run_killed("write", str(path), point)
    assert json.loads(path.read_text()) == {"version": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "results.json"]
    assert all(name.endswith(".tmp") for name in leftovers)  # the next write replaces its own stray file
    write_json_atomically(path, {"version": 3})
    assert json.loads(path.read_text()) == {"version": 3}


@pytest.mark.parametrize("point", ["model", "optimizer", "state"])
def test_resume_after_a_kill_while_checkpointing_equals_the_straight_run(tmp_path: Path, point: str) -> None:
    run_killed("train", str(tmp_path / "killed"), point, "5")
    output = tmp_path / "killed" / "out"
    assert checkpoint_problem(output / "checkpoint-5") is not None  # the kill left checkpoint-5 half-written
    assert checkpoint_problem(output / "checkpoint-4") is None
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-5: .*interrupted"):
        make_trainer(tmp_path / "killed").train(resume_from_checkpoint=str(output / "checkpoint-5"))
    resumed = make_trainer(tmp_path / "killed")  # a fresh trainer on the same folder, as after a restart
    resumed.train(resume_from_checkpoint=True)
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    assert resumed.state.global_step == straight.state.global_step == 8
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    final = load_file(str(output / "checkpoint-8" / "model.safetensors"))
    assert torch.equal(final["linear.weight"], straight.model.linear.weight.detach())
