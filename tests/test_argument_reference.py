"""The API reference renders every argument field with its --help text (docs/hooks.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from hf_enhance.distillation import DistillationTrainingArguments
from hf_enhance.training import EnhancedTrainingArguments

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("cls", "base"), [
    (EnhancedTrainingArguments, "transformers.TrainingArguments"),
    (DistillationTrainingArguments, "hf_enhance.training.EnhancedTrainingArguments"),
])  # fmt: skip
def test_every_own_field_has_help_and_a_row_in_the_reference(cls: type, base: str) -> None:
    inherited = {
        f.name for b in cls.__mro__[1:] if dataclasses.is_dataclass(b) for f in dataclasses.fields(b)
    }
    own = [f for f in dataclasses.fields(cls) if f.name not in inherited and not f.name.startswith("_")]
    assert own and all(f.metadata.get("help") for f in own), [
        f.name for f in own if not f.metadata.get("help")
    ]
    page = _hooks().on_page_markdown(f"<!-- fields: {cls.__module__}.{cls.__name__} -->")
    for field in own:
        assert f"| `{field.name}` |" in page
    assert len(page.splitlines()) == len(own) + 2


def test_the_api_pages_ask_for_both_tables() -> None:
    pages = (DOCS / "api" / "training.md").read_text() + (DOCS / "api" / "distillation.md").read_text()
    assert "<!-- fields: hf_enhance.training.EnhancedTrainingArguments -->" in pages
    assert "<!-- fields: hf_enhance.distillation.DistillationTrainingArguments -->" in pages
