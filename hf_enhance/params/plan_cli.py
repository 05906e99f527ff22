"""hf-enhance plan: per-GPU memory of distilling a teacher into a student, per set-up, before downloading.

The command's work; its arguments and examples are in `hf_enhance.params.arguments`.
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_enhance.params.arguments import add_plan_arguments as add_arguments
from hf_enhance.params.arguments import guarded
from hf_enhance.params.planner import (
    PLAN_SETUPS,
    MemoryPlan,
    cache_id_dtype,
    plan_distillation_memory,
)
from hf_enhance.params.report import format_bytes, text_table

__all__ = ["add_arguments", "main", "run", "text_plan"]


def _cache_line(plan: MemoryPlan) -> str:
    disk = plan.setup("offline_cache").cache_disk_bytes
    total = (
        "--tokens gives the total"
        if disk is None
        else f"{format_bytes(disk)} for {plan.cache_tokens:,} training tokens"
    )
    return (
        f"  offline cache on disk: {plan.cache_bytes_per_token} B per token (top-{plan.top_k} "
        f"{cache_id_dtype(plan.vocab_size)} ids, float16 log-probs, a float32 residual log-prob); {total}"
    )


def text_plan(plan: MemoryPlan) -> str:
    """What the CLI prints: a title, one row per set-up and what the numbers leave out."""
    budget = format_bytes(plan.gpu_memory_bytes)
    lines = [
        f"{plan.teacher} teacher ({plan.teacher_parameters:,} parameters) -> {plan.student} student "
        f"({plan.student_parameters:,}) on {plan.gpus} GPU{'s' if plan.gpus != 1 else ''} x {budget}",
        f"  per GPU, bf16 weights/gradients/AdamW states, {plan.tokens_per_gpu:,} tokens per micro-batch, "
        f"vocabulary {plan.vocab_size:,}",
        "",
    ]
    rows = [
        [
            row.name,
            format_bytes(row.student_states),
            format_bytes(row.teacher_weights),
            format_bytes(row.gathered),
            format_bytes(row.loss_buffers),
            format_bytes(row.total),
            "yes" if row.fits else "no",
        ]
        for row in plan.setups
    ]
    headers = ["setup", "student states", "teacher", "gathered", "loss buffers", "total per GPU", "fits"]
    lines += [text_table(headers, rows), ""]
    lines += [f"  {name}: {description}" for name, description in PLAN_SETUPS.items()]
    lines += [
        _cache_line(plan),
        "",
        "  Not included: activations (they depend on sequence length, activation checkpointing and kernels),",
        "  the CUDA context, NCCL and DDP gradient buckets (one more copy of the gradients unless",
        "  gradient_as_bucket_view=True) and allocator fragmentation: a set-up that fits needs headroom for them.",
        "  Mixed precision with float32 master weights (DeepSpeed bf16, FSDP2 MixedPrecisionPolicy) doubles",
        "  the student states (16 bytes per parameter instead of 8).",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``plan`` command; returns the exit status."""
    plan, status = guarded(
        lambda: plan_distillation_memory(
            args.teacher,
            args.student,
            gpus=args.gpus,
            gpu_memory_gib=args.gpu_memory,
            tokens_per_gpu=args.tokens_per_gpu,
            chunk_size=args.chunk_size,
            cache_tokens=args.tokens,
            top_k=args.top_k,
        )
    )
    if plan is None:
        return status
    print(json.dumps(plan.to_dict(), indent=2) if args.json else text_plan(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_enhance.params.plan_cli``."""
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="python -m hf_enhance.params.plan_cli", description=__doc__.split("\n")[0]
        )
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
