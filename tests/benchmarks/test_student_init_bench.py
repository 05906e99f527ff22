"""benchmarks/student_init.py on a tiny teacher: every start trains, with and without hidden states."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from student_init import STARTS, main


@pytest.mark.slow
def test_tiny_run_trains_every_row_and_writes_the_results(tmp_path: Path) -> None:
    payload = main(["--tiny", "--output", str(tmp_path / "student_init")])
    assert json.loads((tmp_path / "student_init.json").read_text()) == json.loads(json.dumps(payload))
    assert (tmp_path / "student_init.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "student_init.md").read_text()
    assert "python benchmarks/student_init.py --tiny" in report
    rows = {row["row"]: row for row in payload["rows"]}
    assert list(rows) == [*(f"{start}{suffix}" for start in STARTS for suffix in ("", "+hidden")), "ce_only"]
    for row in rows.values():
        assert math.isfinite(row["perplexity"]) and row["perplexity"] < row["perplexity_before"]
        assert f"| {row['row']} |" in report
    assert rows["importance_depth"]["layers"] == rows["fresh"]["layers"] == 2
    assert rows["fresh"]["parameters"] == rows["importance_depth"]["parameters"]
    assert rows["width"]["layers"] == 4 and rows["width"]["intermediate_size"] == 24
    # The hidden-state term changes what is learned, so each +hidden row differs from its logits-only twin.
    assert all(rows[start]["perplexity"] != rows[f"{start}+hidden"]["perplexity"] for start in STARTS)
    assert set(payload["goals"]) == {"importance_with_hidden_beats_uniform_and_fresh"}


def test_calibration_larger_than_the_training_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds --train_rows"):
        main(["--train_rows", "4", "--calibration_blocks", "8"])
