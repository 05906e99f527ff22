"""Run by the engine tests under `torch.distributed.run` (CPU and gloo unless the engine needs GPUs), and in-process.

A student distilled with the teacher placed by an engine must train exactly like one process holding the whole
teacher with the whole batch of 4. Engines (the first argument after the output directory):

* ``sharded``: a DDP student, the teacher sharded with `shard_teacher` (vocabulary-parallel objective);
* ``zero2`` / ``zero3``: DeepSpeed ZeRO-2 (teacher whole on each process) / ZeRO-3 (student and teacher
  partitioned, the fused objective on gathered heads);
* ``fsdp2``: accelerate's FSDP2 (GPUs only): the trainer shards the teacher itself.

Each process saves its final student (gathered), its logged losses and its share of the teacher's parameters to
<output_dir>/rank<N>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hf_enhance.distillation import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation.placement.fsdp2 import shard_teacher
from hf_enhance.distillation.placement.zero3 import gathered
from tests.launch import finish_worker, torchrun_two_processes
from tests.tiny import PLAIN_SGD, lm_dataset, pad_collator, tiny_gpt2


def deepspeed_config(stage: int) -> dict[str, Any]:
    """ZeRO ``stage`` with the batch settings left to the Trainer; at stage 3 every student tensor partitioned."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    auto = (
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "train_batch_size",
        "gradient_clipping",
    )
    return {"zero_optimization": zero, **dict.fromkeys(auto, "auto")}


def engine_arguments(engine: str | None, gpu: bool) -> dict[str, Any]:
    """TrainingArguments that put the student under ``engine`` (None: one plain process)."""
    kwargs: dict[str, Any] = {"use_cpu": not gpu}
    if engine in ("zero2", "zero3"):
        kwargs.update(deepspeed=deepspeed_config(int(engine[-1])), ddp_backend="nccl" if gpu else "gloo")
    elif engine == "fsdp2":
        kwargs.update(
            fsdp="full_shard", fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"]}
        )
    return kwargs


def _teacher_share(teacher: nn.Module) -> float:
    """This process's share of the teacher's parameter values (partitions, shards, or all of it)."""
    teacher = getattr(teacher, "module", teacher)
    mine = total = 0
    for p in teacher.parameters():
        if hasattr(p, "ds_id"):  # ZeRO-3 keeps parameters under its persistence threshold whole
            mine, total = mine + (p.ds_numel if p.ds_persist else p.ds_tensor.numel()), total + p.ds_numel
        elif isinstance(p, DTensor):
            mine, total = mine + p.to_local().numel(), total + p.numel()
        else:
            mine, total = mine + p.numel(), total + p.numel()
    return mine / total


def train(output_dir: Path, per_device_batch: int, engine: str | None, gpu: bool = False) -> dict[str, Any]:
    """Two optimizer steps over 8 rows (2 micro-batches each); returns the final student and the logged losses."""
    args = DistillationTrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=2, learning_rate=0.5, alpha=0.5, temperature=2.0, fused_chunk_size=8,
        train_sampling_strategy="sequential", report_to="none", eval_strategy="no", save_strategy="no",
        disable_tqdm=True, seed=0, logging_steps=1, **PLAIN_SGD, **engine_arguments(engine, gpu),
    )  # fmt: skip
    teacher: nn.Module | str = tiny_gpt2(seed=1, n_layer=3)
    if engine == "sharded":
        shard_teacher(teacher)
    elif engine == "zero3":  # by path: transformers loads it straight into ZeRO-3 partitions
        _ = args.device  # joins the processes
        if not gpu:  # what accelerate's state does under DeepSpeed on GPUs, and its CPU path leaves out
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")
        path = output_dir / "teacher"
        if os.environ["RANK"] == "0":
            teacher.save_pretrained(path)
        torch.distributed.barrier()
        teacher = str(path)
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
    student = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    with gathered(student, recurse=True):
        weights = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
            for k, v in student.state_dict().items()
        }
    return {
        "student": weights,
        "logs": [entry for entry in logs if entry],
        "teacher_share": _teacher_share(trainer.teacher_model),
        "fused": trainer._fused,
    }


def check_trains_like_one_process(
    directory: Path, engine: str, processes: int = 2, gpu: bool = False
) -> list[dict[str, Any]]:
    """Train under ``engine`` in ``processes`` processes and, meanwhile, in this one with the whole teacher; assert
    equal students (1e-5) and logged losses on every rank. Returns what each rank saved."""
    single = torchrun_two_processes(
        "tests.distillation.distributed_teacher", str(directory), engine, *(["--gpu"] if gpu else []),
        timeout=600, processes=processes,
        meanwhile=lambda: train(directory / "single", per_device_batch=4, engine=None, gpu=gpu),
    )  # fmt: skip
    ranks = [torch.load(directory / f"rank{rank}.pt") for rank in range(processes)]
    for name, tensor in single["student"].items():
        torch.testing.assert_close(ranks[0]["student"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        for rank in ranks[1:]:
            assert torch.equal(rank["student"][name], ranks[0]["student"][name]), name
    assert len(single["logs"]) == 2
    for rank in ranks:
        for got, want in zip(rank["logs"], single["logs"], strict=True):
            assert got.keys() == want.keys() == {"loss", "kd_loss", "ce_loss"}
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5), key
    return ranks


if __name__ == "__main__":
    directory, engine = Path(sys.argv[1]), sys.argv[2]
    processes = int(os.environ["WORLD_SIZE"])
    state = train(directory / "run", 4 // processes, engine, gpu=sys.argv[3:] == ["--gpu"])
    torch.save(state, directory / f"rank{torch.distributed.get_rank()}.pt")
    finish_worker()
