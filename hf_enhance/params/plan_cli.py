"""hf-enhance plan: per-GPU memory of distilling a teacher into a student, per set-up, before downloading.

Examples:

    hf-enhance plan --teacher llama-3-70b --student llama-3-8b --gpus 8 --gpu-memory 80
    hf-enhance plan --teacher qwen2.5-1.5b --student qwen2.5-0.5b --gpus 2 --gpu-memory 24 --tokens 2e9 --json
    hf-enhance plan --teacher ./teacher/config.json --student ./student/config.json --gpus 4
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_enhance.params.cli import guarded
from hf_enhance.params.planner import (
    DEFAULT_TOP_K,
    PLAN_SETUPS,
    MemoryPlan,
    cache_id_dtype,
    plan_distillation_memory,
)
from hf_enhance.params.report import format_bytes, text_table
from hf_enhance.params.zoo import MODEL_ZOO

__all__ = ["add_arguments", "main", "run", "text_plan"]


def _token_count(text: str) -> int:
    """A whole number of tokens, also written as ``2e9`` or ``2_000_000_000``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (e.g. 2e9).") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens.")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``plan`` arguments to ``parser`` (the ``hf-enhance plan`` subparser or a standalone one)."""
    models = f"A model name ({', '.join(MODEL_ZOO)}) or a local config.json / model directory."
    parser.add_argument("--teacher", required=True, help=models)
    parser.add_argument("--student", required=True, help="The student, like --teacher; same vocabulary.")
    parser.add_argument("--gpus", type=int, required=True, help="Number of GPUs.")
    parser.add_argument(
        "--gpu-memory", type=float, default=80.0, help="Memory of one GPU in GiB (default 80)."
    )
    parser.add_argument(
        "--tokens-per-gpu", type=int, default=4096, help="Tokens per micro-batch per GPU (default 4096)."
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="Tokens per chunk of the fused loss (default: from the vocabulary, as DistillationTrainer does).",
    )
    parser.add_argument(
        "--tokens", type=_token_count, help="Training tokens of the offline teacher cache, for its disk size."
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"Teacher ids per token in the offline cache (default {DEFAULT_TOP_K}).",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return parser


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
