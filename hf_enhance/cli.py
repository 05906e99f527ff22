"""The ``hf-enhance`` command: one subcommand per tool."""

from __future__ import annotations

import argparse

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
    """Entry point of the ``hf-enhance`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)
