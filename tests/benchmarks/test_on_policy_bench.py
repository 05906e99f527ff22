"""benchmarks/on_policy.py --tiny: every row trains with its own completions and the results are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

from on_policy import ROWS, TRL_ROWS, main


def test_tiny_run_trains_every_row_and_writes_the_results(tmp_path: Path) -> None:
    payload = main(["--tiny", "--output", str(tmp_path / "on_policy")])
    assert json.loads((tmp_path / "on_policy.json").read_text()) == json.loads(json.dumps(payload))
    report = (tmp_path / "on_policy.md").read_text()
    assert "python benchmarks/on_policy.py --tiny" in report
    rows = {row["row"]: row for row in payload["rows"]}
    assert list(rows) == [*ROWS, *TRL_ROWS]
    for name, row in rows.items():
        assert math.isfinite(row["teacher_nll_of_student_text"]) and f"| {name} |" in report
        assert row["median_step_s"] > 0 and row["peak_mib"] is not None
        fractions = [log["on_policy_fraction"] for log in row["log_history"] if "on_policy_fraction" in log]
        if name == "lmbda_1":
            assert fractions and all(value == 1.0 for value in fractions)
        if name in ("off_policy", "seq_kd"):
            assert all(value == 0.0 for value in fractions)
        if name == "seq_kd":  # the teacher generated: completion lengths were logged
            assert any("completion_length" in log for log in row["log_history"])
    assert set(payload["goals"]) == {
        "on_policy_lowers_the_teacher_nll_of_the_students_text",
        "on_policy_after_off_policy_lowers_it",
        "step_time_at_most_0.7x_trl_gkd_at_lmbda_1",
        "peak_memory_at_most_0.5x_trl_gkd_at_lmbda_1",
    }
    assert set(payload["versus_trl_gkd"]) == {"step_time_ratio", "peak_memory_ratio"}
    assert "against TRL GKDTrainer lmbda = 1" in report
