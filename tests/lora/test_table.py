"""The README table is generated from live resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hf_enhance.lora.table import main, presets_table


def test_table_has_a_row_per_architecture_and_a_column_per_preset() -> None:
    table = presets_table(["gpt2", "bert", "mixtral"])
    lines = table.splitlines()
    assert lines[0].startswith(
        "| model_type | attention-qv | attention | mlp | attention-mlp | all-linear | ia3"
    )
    assert "| `gpt2` | `c_attn` (12) |" in table
    assert "`intermediate.dense`, `output.dense` except `attention.output.dense` (24)" in table
    assert "`mixtral` + ia3: Preset 'ia3' hits fused mixture-of-experts weights" in table


def test_main_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hf_enhance.lora.table.presets_table", lambda: "| t |\n")
    monkeypatch.setattr(sys, "argv", ["table", "--output", str(tmp_path / "t.md")])
    main()
    assert (tmp_path / "t.md").read_text() == "| t |\n"
