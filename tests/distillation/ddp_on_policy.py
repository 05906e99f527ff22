"""Run by test_on_policy.py under `torch.distributed.run --nproc_per_node 2` (CPU, gloo), and in-process.

On-policy distillation (lmbda = 1, greedy generation, so every process writes what one process would): two
processes with 2 prompts each must train exactly like one process with 4, with the step normalised by the
completion tokens of the whole batch. Each process saves its final student to <output_dir>/rank<N>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset

from hf_enhance.distillation import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
)
from tests.distillation.test_on_policy import gpt2
from tests.examples.tiny_lm import tiny_tokenizer
from tests.launch import finish_worker

# Prompts of one token length: the processes' batches then need no more left padding than the single batch, so
# greedy decoding sees bit-identical inputs however the rows are split.
PROMPTS = ["The sun", "A bird", "The moon", "A bird", "The moon", "The sun", "The sun", "The moon"]


def train(output_dir: Path, per_device_batch: int) -> dict[str, torch.Tensor]:
    """Two on-policy optimizer steps over 8 prompts; returns the student's final tensors."""
    tokenizer = tiny_tokenizer()
    args = DistillationTrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=per_device_batch, optim="sgd",
        learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, lmbda=1.0,
        max_new_tokens=5, generation_temperature=0.0, fused_loss=False, train_sampling_strategy="sequential",
        report_to="none", use_cpu=True, eval_strategy="no", save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    rows = Dataset.from_dict({"prompt": PROMPTS, "completion": [" x"] * len(PROMPTS)})
    trainer = DistillationTrainer(
        model=gpt2(tokenizer, 0),
        teacher_model=gpt2(tokenizer, 1),
        args=args,
        train_dataset=rows,
        data_collator=PromptCompletionCollator(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    state = train(directory / "run", per_device_batch=2)
    torch.save(state, directory / f"rank{torch.distributed.get_rank()}.pt")
    finish_worker()
