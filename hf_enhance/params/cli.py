"""hf-enhance params: count what a fine-tuning choice trains and the memory it needs, before downloading.

The command's work; its arguments and examples are in `hf_enhance.params.arguments`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hf_enhance.lora import list_lora_presets
from hf_enhance.params.arguments import add_params_arguments as add_arguments
from hf_enhance.params.arguments import guarded
from hf_enhance.params.counting import count_parameters
from hf_enhance.params.names import METHODS
from hf_enhance.params.report import text_report, text_table
from hf_enhance.params.zoo import MODEL_ZOO

__all__ = ["add_arguments", "guarded", "main", "run"]


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
