"""Run by test_sharded.py under `torch.distributed.run --nproc_per_node 2` (CPU, gloo), and in-process.

A DDP student distilled from a teacher sharded with `shard_teacher` (half of it on each process, the
vocabulary-parallel objective) must train exactly like one process holding the whole teacher with batches of 4.
Each process saves its final student and its logged losses to <output_dir>/rank<N>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from hf_enhance.distillation import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation.sharded import shard_teacher
from tests.launch import finish_worker
from tests.tiny import PLAIN_SGD, lm_dataset, pad_collator, tiny_gpt2


def train(output_dir: Path, per_device_batch: int, shard: bool) -> dict[str, Any]:
    """Two optimizer steps over 8 rows (2 micro-batches each); returns the final student and the logged losses."""
    args = DistillationTrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=2, learning_rate=0.5, alpha=0.5, temperature=2.0, fused_chunk_size=8,
        train_sampling_strategy="sequential", report_to="none", use_cpu=True, eval_strategy="no",
        save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1, **PLAIN_SGD,
    )  # fmt: skip
    teacher = tiny_gpt2(seed=1, n_layer=3)
    if shard:
        shard_teacher(teacher)
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0, n_embd=16),
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(16),
        data_collator=pad_collator,
    )
    trainer.train()
    logs = [
        {k: v for k, v in entry.items() if k in ("loss", "kd_loss", "ce_loss")}
        for entry in trainer.state.log_history
    ]
    return {
        "student": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "logs": [entry for entry in logs if entry],
    }


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    state = train(directory / "run", per_device_batch=2, shard=True)
    torch.save(state, directory / f"rank{torch.distributed.get_rank()}.pt")
    finish_worker()
