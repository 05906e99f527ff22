"""benchmarks/teacher_cache.py on tiny models: every method trains and is evaluated, the results are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from teacher_cache import main


@pytest.mark.slow
def test_tiny_run_trains_every_method_and_writes_the_results(tmp_path: Path) -> None:
    payload = main(["--tiny", "--output", str(tmp_path / "teacher_cache")])
    assert json.loads((tmp_path / "teacher_cache.json").read_text()) == json.loads(json.dumps(payload))
    report = (tmp_path / "teacher_cache.md").read_text()
    assert "python benchmarks/teacher_cache.py --tiny" in report
    summary = payload["summary"]
    rows = {row["method"]: row for row in summary["rows"]}
    assert list(rows) == ["student_only", "online", "cached_k32", "cached_k8"]
    assert all(f"| {method} |" in report for method in rows)
    assert set(summary["goals"]) == {
        "cached_epoch_within_1.1x_student_only",
        "cache_at_most_300_bytes_per_token",
        "cached_eval_loss_within_1pct_of_online",
    }
    for row in rows.values():
        assert len(row["epoch_s"]) == 2 and min(row["epoch_s"]) > 0
        # Two epochs of training move every student away from its random initialisation.
        assert math.isfinite(row["eval_loss"]) and row["eval_loss"] < summary["initial_student_eval_loss"]
    assert rows["student_only"]["time_vs_student_only"] == 1.0
    for k in (32, 8):
        cached = rows[f"cached_k{k}"]
        # Every training token is cached: k uint16 ids + k float16 log-probs + a float32 bucket, plus overhead.
        assert cached["cache_tokens"] == payload["train_rows"] * payload["settings"]["block_size"]
        assert 4 * k + 4 <= cached["bytes_per_token"] < 4 * k + 40
        assert cached["eval_loss_vs_online"] == pytest.approx(
            cached["eval_loss"] / rows["online"]["eval_loss"] - 1
        )


def test_a_single_epoch_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="at least 2 epochs"):
        main(["--tiny", "--epochs", "1"])
