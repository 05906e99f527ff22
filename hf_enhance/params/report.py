"""Human-readable numbers and tables for parameter counts (shared by the CLI and the benchmark)."""

from __future__ import annotations

from collections.abc import Sequence

from hf_enhance.params.memory import MEMORY_SETUPS
from hf_enhance.params.result import ParameterCount

__all__ = ["format_bytes", "markdown_table", "percent", "text_report", "text_table"]

_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def format_bytes(n: int | float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``512 B`` (binary units)."""
    for unit, size in _UNITS:
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def percent(fraction: float) -> str:
    """A fraction as a percentage with three significant digits: ``0.299%``, ``21.0%``, ``100%``."""
    return f"{100 * fraction:#.3g}".rstrip(".") + "%"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Columns padded to width: numeric columns right-aligned, text left-aligned."""
    columns = list(zip(headers, *rows, strict=True))
    widths = [max(len(str(cell)) for cell in column) for column in columns]
    right = [bool(rows) and all(_numeric(cell) for cell in column[1:]) for column in columns]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return (indent + "   ".join(padded)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; numeric-looking columns right-aligned."""
    align = ["---:" if rows and all(_numeric(row[i]) for row in rows) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(cell: object) -> bool:
    text = str(cell).replace(",", "").replace("%", "").split(" ")[0]
    try:
        float(text)
    except ValueError:
        return False
    return True


def text_report(count: ParameterCount, *, title: str, all_modules: bool = False) -> str:
    """What the CLI prints: totals, where the trainable parameters sit, and the memory per setup."""
    modules = count.modules if all_modules else count.by_module_type()
    lines = [
        title,
        f"  trainable {count.trainable:,} of {count.total:,} parameters ({percent(count.trainable_fraction)})",
        "",
    ]
    header = "trainable module" if all_modules else "trainable module (* = every layer)"
    rows = [[name, f"{n:,}", percent(n / count.trainable)] for name, n in modules.items()]
    lines += [text_table([header, "parameters", "share"], rows), ""]
    rows = []
    for setup in count.memory_setups:
        estimate = count.memory(setup)
        rows.append(
            [
                setup,
                format_bytes(estimate.weights),
                format_bytes(estimate.gradients),
                format_bytes(estimate.optimizer_states),
                format_bytes(estimate.total),
            ]
        )
    lines += [
        "  training memory: weights + gradients + AdamW states (activations not included)",
        text_table(["setup", "weights", "gradients", "AdamW states", "total"], rows),
        "",
        *(f"  {setup}: {MEMORY_SETUPS[setup]}" for setup in count.memory_setups),
    ]
    return "\n".join(lines)
