"""MkDocs hook: `<!-- fields: module.Class -->` in a page becomes a table of the dataclass's own fields.

Each row gives the field's name, default and the ``help`` text of its ``field(metadata={"help": ...})``, the text
`HfArgumentParser` shows for ``--help``, so the API reference and the command line say the same thing.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

_MARKER = re.compile(r"<!-- fields: ([\w.]+) -->")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(path: str) -> str:
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    inherited = {
        f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)
    }
    rows = ["| field | default | what it does |", "|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.name in inherited or field.name.startswith("_"):
            continue
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        rows.append(f"| `{field.name}` | `{_cell(default)}` | {_cell(field.metadata.get('help', ''))} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _MARKER.sub(lambda match: _table(match.group(1)), markdown)
