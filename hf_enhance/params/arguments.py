"""The arguments of the ``hf-enhance`` subcommands and their error handling, without importing torch,
transformers or peft: the parser is built, ``--help`` printed and bad arguments refused before any of them loads
(the commands' work, in `hf_enhance.params.cli` and `hf_enhance.params.plan_cli`, imports them)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from hf_enhance.params.names import DEFAULT_TOP_K, LORA_PRESET_NAMES, METHODS, MODEL_NAMES

__all__ = [
    "PARAMS_DESCRIPTION",
    "PLAN_DESCRIPTION",
    "add_params_arguments",
    "add_plan_arguments",
    "guarded",
    "token_count",
]

PARAMS_DESCRIPTION = """hf-enhance params: count what a fine-tuning choice trains and the memory it needs, before downloading.

Examples:

    hf-enhance params llama-2-70b --preset all-linear -r 16
    hf-enhance params gpt2-medium --method ia3 --json
    hf-enhance params ./my-model/config.json --method full
    python -m hf_enhance.params --list
"""

PLAN_DESCRIPTION = """hf-enhance plan: per-GPU memory of distilling a teacher into a student, per set-up, before downloading.

Examples:

    hf-enhance plan --teacher llama-3-70b --student llama-3-8b --gpus 8 --gpu-memory 80
    hf-enhance plan --teacher qwen2.5-1.5b --student qwen2.5-0.5b --gpus 2 --gpu-memory 24 --tokens 2e9 --json
    hf-enhance plan --teacher ./teacher/config.json --student ./student/config.json --gpus 4
"""

T = TypeVar("T")


def add_params_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``params`` arguments to ``parser`` (the ``hf-enhance params`` subparser or a standalone one)."""
    parser.add_argument(
        "model",
        nargs="?",
        help=f"A model name ({', '.join(MODEL_NAMES)}) or a local config.json / model directory.",
    )
    parser.add_argument("--method", choices=list(METHODS), help="Fine-tuning method (default: lora).")
    parser.add_argument("--preset", help=f"LoRA preset: {', '.join(LORA_PRESET_NAMES)}.")
    parser.add_argument(
        "--target-modules", nargs="+", help="PEFT target_modules for LoRA/IA3 (instead of --preset)."
    )
    parser.add_argument("-r", "--rank", type=int, help="LoRA rank (default 8).")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (does not change the counts).")
    parser.add_argument(
        "--task-type", help="PEFT task type: CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, TOKEN_CLS, ..."
    )
    parser.add_argument(
        "--num-virtual-tokens", type=int, help="Prefix length for --method prefix (default 20)."
    )
    parser.add_argument("--modules", action="store_true", help="List every trainable module, not per type.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    parser.add_argument(
        "--list", action="store_true", help="List the model names and LoRA presets, then exit."
    )
    return parser


def token_count(text: str) -> int:
    """A whole number of tokens, also written as ``2e9`` or ``2_000_000_000``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (e.g. 2e9).") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens.")
    return int(value)


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``plan`` arguments to ``parser`` (the ``hf-enhance plan`` subparser or a standalone one)."""
    models = f"A model name ({', '.join(MODEL_NAMES)}) or a local config.json / model directory."
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
        "--tokens", type=token_count, help="Training tokens of the offline teacher cache, for its disk size."
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"Teacher ids per token in the offline cache (default {DEFAULT_TOP_K}).",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return parser


def guarded(compute: Callable[[], T]) -> tuple[T | None, int]:
    """``(compute(), 0)``, or ``(None, status)`` after printing ``error: ...``: 2 for input the library refused
    (its message says what to change), 1 for anything else. A user never gets a traceback;
    ``HF_ENHANCE_DEBUG=1`` shows it."""
    try:
        return compute(), 0
    except (ValueError, TypeError, KeyError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None, 2
    except Exception as error:
        if os.environ.get("HF_ENHANCE_DEBUG"):
            raise
        print(
            f"error: {type(error).__name__}: {error}\nThis input is not checked yet or hit a bug in hf_enhance; "
            "please report the command line. Rerun with HF_ENHANCE_DEBUG=1 for the traceback.",
            file=sys.stderr,
        )
        return None, 1
