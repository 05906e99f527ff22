"""hf-enhance params: count what a fine-tuning choice trains and the memory it needs, before downloading.

Examples:

    hf-enhance params llama-2-70b --preset all-linear -r 16
    hf-enhance params gpt2-medium --method ia3 --json
    hf-enhance params ./my-model/config.json --method full
    python -m hf_enhance.params --list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hf_enhance.lora import list_lora_presets
from hf_enhance.params.counting import METHODS, count_parameters
from hf_enhance.params.report import text_report, text_table
from hf_enhance.params.zoo import MODEL_ZOO

__all__ = ["add_arguments", "guarded", "main", "run"]

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``params`` arguments to ``parser`` (the ``hf-enhance params`` subparser or a standalone one)."""
    parser.add_argument(
        "model",
        nargs="?",
        help=f"A model name ({', '.join(MODEL_ZOO)}) or a local config.json / model directory.",
    )
    parser.add_argument("--method", choices=list(METHODS), help="Fine-tuning method (default: lora).")
    parser.add_argument("--preset", help=f"LoRA preset: {', '.join(list_lora_presets())}.")
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


def _listing() -> str:
    models = [[name, entry.source, f"{entry.parameters:,}"] for name, entry in MODEL_ZOO.items()]
    presets = [[name, description] for name, description in list_lora_presets().items()]
    methods = [[name, description] for name, description in METHODS.items()]
    return "\n\n".join(
        [
            text_table(["model", "config from", "parameters"], models),
            text_table(["preset", "targets"], presets),
            text_table(["method", "what is trained"], methods),
        ]
    )


def _count_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options given, so count_parameters refuses those that do not apply to the method."""
    given = {
        "method": args.method,
        "preset": args.preset,
        "target_modules": args.target_modules,
        "r": args.rank,
        "lora_alpha": args.lora_alpha,
        "task_type": args.task_type,
        "num_virtual_tokens": args.num_virtual_tokens,
    }
    return {key: value for key, value in given.items() if value is not None}


def _title(model: str, kwargs: dict[str, Any], count_model: str) -> str:
    shown = model if model == count_model else f"{model} ({count_model})"
    details = [f"{key}={value}" for key, value in kwargs.items() if key != "method"]
    return " · ".join([shown, kwargs.get("method", "lora"), *details])


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


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``params`` command; returns the exit status."""
    if args.list:
        print(_listing())
        return 0
    if args.model is None:
        print("error: give a model name or config path (see --list).", file=sys.stderr)
        return 2
    kwargs = _count_kwargs(args)
    count, status = guarded(lambda: count_parameters(args.model, **kwargs))
    if count is None:
        return status
    if args.json:
        print(json.dumps({"arguments": kwargs, **count.to_dict(modules=args.modules)}, indent=2))
    else:
        print(text_report(count, title=_title(args.model, kwargs, count.model), all_modules=args.modules))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_enhance.params``."""
    parser = add_arguments(
        argparse.ArgumentParser(prog="python -m hf_enhance.params", description=__doc__.split("\n")[0])
    )
    return run(parser.parse_args(argv))
