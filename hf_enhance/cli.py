"""The ``hf-enhance`` command: one subcommand per tool."""

from __future__ import annotations

import argparse
import os
import sys

from hf_enhance.params import cli as params_cli
from hf_enhance.params import plan_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-enhance", description="Distillation, LoRA presets and training defaults for the HF stack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    params = commands.add_parser(
        "params",
        help="count what a fine-tuning choice trains and the memory it needs (no download, no weights)",
        description=params_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    params_cli.add_arguments(params).set_defaults(run=params_cli.run)
    plan = commands.add_parser(
        "plan",
        help="per-GPU memory of distilling a teacher into a student, per set-up (no download, no weights)",
        description=plan_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan_cli.add_arguments(plan).set_defaults(run=plan_cli.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-enhance`` console script. Output into a pipe closed early (``| head -1``) ends
    quietly, as command-line tools do."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    return status
