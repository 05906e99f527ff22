"""A training run (or a file write) that kills itself with SIGKILL at a chosen point of a write.

    python -m tests.faults.killed_run train <output_dir> <point> <step>
    python -m tests.faults.killed_run write <path> <point>

Training points: `model` (right after the checkpoint's weights), `optimizer` (after the optimizer state, before
the RNG state and trainer_state.json) and `state` (halfway through trainer_state.json). Write points: `data`
(halfway through the data) and `sync` (the data is written, before the rename).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerState

from hf_enhance.files import write_json_atomically
from hf_enhance.training import EnhancedTrainer
from tests.training.tiny import TinyRegressor, make_args, regression_data


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def make_trainer(output_dir: Path) -> EnhancedTrainer:
    """8 steps, a checkpoint after each."""
    args = make_args(output_dir, num_train_epochs=2, save_strategy="steps", save_steps=1, eval_strategy="no",
                     load_best_model_at_end=False, early_stopping_patience=None)  # fmt: skip
    torch.manual_seed(0)
    return EnhancedTrainer(model=TinyRegressor(), args=args, train_dataset=regression_data())


def train_and_die(output_dir: Path, point: str, kill_step: int) -> None:
    """Train, killed at `point` while writing the checkpoint of `kill_step`."""
    trainer = make_trainer(output_dir)

    def at(step_point: str, original: Any) -> Any:
        def patched(self: Any, *a: Any, **k: Any) -> Any:
            result = original(self, *a, **k)
            if point == step_point and trainer.state.global_step == kill_step:
                die()
            return result

        return patched

    Trainer._save_optimizer_and_scheduler = at("model", Trainer._save_optimizer_and_scheduler)
    Trainer._save_rng_state = at("optimizer", Trainer._save_rng_state)
    original_state = TrainerState.save_to_json

    def half_state(self: TrainerState, json_path: str) -> None:
        original_state(self, json_path)
        if point == "state" and self.global_step == kill_step:
            text = Path(json_path).read_text()
            Path(json_path).write_text(text[: len(text) // 2])  # what an in-place write leaves when killed
            die()

    TrainerState.save_to_json = half_state
    trainer.train()


def write(path: Path, point: str) -> None:
    """Replace a complete JSON file with a bigger one, killed mid-way."""
    import hf_enhance.files as files

    original_fsync = os.fsync
    if point == "data":
        original_write = Path.write_text

        def half_write(self: Path, text: str, *a: Any, **k: Any) -> int:
            original_write(self, text[: len(text) // 2], *a, **k)
            die()
            return 0

        Path.write_text = half_write  # type: ignore[method-assign]
    else:

        def fsync_then_die(fd: int) -> None:
            original_fsync(fd)
            die()

        files.os.fsync = fsync_then_die  # type: ignore[attr-defined]
    write_json_atomically(path, {"version": 2, "data": list(range(100_000))})


if __name__ == "__main__":
    kind, target, point = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if kind == "train":
        train_and_die(target, point, int(sys.argv[4]))
    else:
        write(target, point)
