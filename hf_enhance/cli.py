"""The ``hf-enhance`` command: one subcommand per tool."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hf_enhance.params.arguments import (
    PARAMS_DESCRIPTION,
    PLAN_DESCRIPTION,
    add_params_arguments,
    add_plan_arguments,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-enhance", description="Distillation, LoRA presets and training defaults for the HF stack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    params = commands.add_parser(
        "params",
        help="count what a fine-tuning choice trains and the memory it needs (no download, no weights)",
        description=PARAMS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_params_arguments(params).set_defaults(runner="hf_enhance.params.cli")
    plan = commands.add_parser(
        "plan",
        help="per-GPU memory of distilling a teacher into a student, per set-up (no download, no weights)",
        description=PLAN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_arguments(plan).set_defaults(runner="hf_enhance.params.plan_cli")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-enhance`` console script. Output into a pipe closed early (``| head -1``) ends
    quietly, as command-line tools do."""
    args = build_parser().parse_args(argv)
    try:
        status = importlib.import_module(args.runner).run(
            args
        )  # the command's work imports torch, not --help
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    return status
