"""Run by test_intermediate.py under `torch.distributed.run --nproc_per_node 2` (CPU, gloo), and in-process.

Hidden-state distillation with a width projection: two processes with batches of 2 must train exactly like one
process with batches of 4. Process 1 starts from other projections than process 0: the trainer must take rank
0's, as DDP does for the model. Each process saves its final student and projections to <output_dir>/rank<N>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hf_enhance.distillation import DistillationTrainer, DistillationTrainingArguments
from tests.launch import finish_worker
from tests.tiny import lm_dataset, pad_collator, tiny_gpt2


def train(output_dir: Path, per_device_batch: int) -> dict[str, torch.Tensor]:
    """Two optimizer steps over 8 rows; returns the student's and the projections' final tensors."""
    args = DistillationTrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=per_device_batch, optim="sgd",
        learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        hidden_weight=2.0, hidden_distance="mse", train_sampling_strategy="sequential", report_to="none",
        use_cpu=True, eval_strategy="no", save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0, n_embd=16),
        teacher_model=tiny_gpt2(seed=1, n_layer=4),
        args=args,
        train_dataset=lm_dataset(8),
        data_collator=pad_collator,
    )
    if args.process_index == 1:
        with torch.no_grad():
            trainer.hidden_projections[0].weight.add_(1.0)
    trainer.train()
    result = {f"student.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    result.update(
        {f"projections.{k}": v.detach().clone() for k, v in trainer.hidden_projections.state_dict().items()}
    )
    return result


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    state = train(directory / "run", per_device_batch=2)
    rank = torch.distributed.get_rank()
    torch.save(state, directory / f"rank{rank}.pt")
    finish_worker()
