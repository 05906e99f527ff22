"""benchmarks/sharded_teacher.py --cpu: 2 processes against 1, every exactness and memory goal, the results file."""

from __future__ import annotations

import json
from pathlib import Path

from sharded_teacher import main


def test_cpu_checks_meet_every_goal_and_write_the_results(tmp_path: Path) -> None:
    payload = main(["--cpu", "--output", str(tmp_path / "sharded"), "--vocab", "8192", "--tokens", "256"])
    assert json.loads((tmp_path / "sharded.json").read_text()) == json.loads(json.dumps(payload))
    summary = payload["summary"]
    assert summary["max_abs_logit_diff"] == 0.0
    assert summary["loss_rel_err"] <= 1e-5 and summary["grad_rel_err"] <= 1e-5
    assert summary["step_max_abs_param_diff"] <= 1e-6
    for rank in summary["teacher_param_fraction_per_rank"]:
        assert set(rank) == {"llama", "gpt2", "llama_padded"}
        assert all(0.45 <= fraction <= 0.55 for fraction in rank.values())
    assert summary["head_memory_ratio"] <= 0.625
    assert summary["goals"] == dict.fromkeys(summary["goals"], True) and len(summary["goals"]) == 6
    assert "python benchmarks/sharded_teacher.py --cpu" in (tmp_path / "sharded.md").read_text()
