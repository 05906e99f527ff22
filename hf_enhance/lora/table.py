"""Generate the README table of presets x architectures: ``python -m hf_enhance.lora.table [--output FILE]``.

Every cell is resolved live, on the meta device, from the architecture's default transformers config, so
the table always shows what the installed versions of hf_enhance, transformers and PEFT actually do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peft import IA3Config, LoraConfig
from transformers import AutoConfig, HfArgumentParser

from hf_enhance.lora.config import lora_config, lora_metadata
from hf_enhance.lora.ia3 import ia3_config
from hf_enhance.lora.presets import ARCHITECTURE_ROLES
from hf_enhance.lora.targets import list_lora_presets

__all__ = ["TableArguments", "main", "presets_table"]


@dataclass
class TableArguments:
    output: str | None = field(default=None, metadata={"help": "Write the Markdown here instead of stdout."})


def _cell(config: LoraConfig | IA3Config, count: int | None = None) -> str:
    feedforward = set(getattr(config, "feedforward_modules", None) or ())
    keys = sorted(config.target_modules) + sorted(getattr(config, "target_parameters", None) or [])
    shown = ", ".join(f"`{key}`" + ("*" if key in feedforward else "") for key in keys)
    if config.exclude_modules:
        shown += " except " + ", ".join(f"`{key}`" for key in sorted(config.exclude_modules))
    return shown if count is None else f"{shown} ({count})"


def presets_table(architectures: list[str] | None = None) -> str:
    """Markdown table: one row per architecture, one column per preset (plus IA3), cells = target keys."""
    architectures = architectures or sorted(ARCHITECTURE_ROLES)
    presets = list(list_lora_presets())
    header = ["model_type", *presets, "ia3 (`*` = feedforward)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    footnotes = []
    for arch in architectures:
        config = AutoConfig.for_model(arch)
        cells = [f"`{arch}`"]
        for preset in presets:
            lora = lora_config(config, preset)
            cells.append(_cell(lora, len(lora_metadata(lora)["targets"])))
        try:
            cells.append(_cell(ia3_config(config)))
        except ValueError as error:
            footnotes.append(f"{len(footnotes) + 1}. `{arch}` + ia3: {error}")
            cells.append(f"n/a ({len(footnotes)})")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Cells list the `target_modules` keys (`target_parameters` for fused MoE experts; `except` = "
        "`exclude_modules`) of the plain `LoraConfig`, and in brackets how many weights they hit in the model "
        "at its default size."
    )
    return "\n".join([*lines, "", note, "", *footnotes]) + "\n"


def main() -> None:
    (args,) = HfArgumentParser(TableArguments).parse_args_into_dataclasses()
    table = presets_table()
    if args.output:
        Path(args.output).write_text(table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
