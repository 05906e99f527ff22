"""benchmarks/on_policy.py --tiny: every row continues one start with its own completions, per seed, and the
results (means, standard errors, paired gaps, goals) are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _sorting import sorting_rows
from on_policy import ROWS, TRL_ROWS, main


def test_tiny_chat_run_trains_every_row_per_seed_and_writes_the_results(tmp_path: Path) -> None:
    payload = main(["--tiny", "--trl", "true", "--seeds", "0,1,2", "--output", str(tmp_path / "on_policy")])
    assert json.loads((tmp_path / "on_policy.json").read_text()) == json.loads(json.dumps(payload))
    report = (tmp_path / "on_policy.md").read_text()
    assert "python benchmarks/on_policy.py --tiny" in report
    assert [(run["row"], run["seed"]) for run in payload["runs"]] == [
        (row, seed) for seed in (0, 1, 2) for row in [*ROWS, *TRL_ROWS]
    ]
    for run in payload["runs"]:
        assert math.isfinite(run["reverse_kl"]) and run["reverse_kl"] >= 0 and run["median_step_s"] > 0
        fractions = [log["on_policy_fraction"] for log in run["log_history"] if "on_policy_fraction" in log]
        if run["row"] == "lmbda_1":
            assert fractions and all(value == 1.0 for value in fractions)
        if run["row"] in ("off_policy", "seq_kd"):
            assert all(value == 0.0 for value in fractions)
        if run["row"] == "seq_kd":  # the teacher generated: completion lengths were logged
            assert any("completion_length" in log for log in run["log_history"])
    for name, row in payload["summary"].items():
        assert row["seeds"] == 3 and f"| {name} |" in report
        values = [run["reverse_kl"] for run in payload["runs"] if run["row"] == name]
        assert math.isclose(row["reverse_kl"]["mean"], sum(values) / 3)
        starts = [payload["start"]["per_seed"][seed]["reverse_kl"] for seed in (0, 1, 2)]
        changes = [value - start for value, start in zip(values, starts, strict=True)]
        assert math.isclose(row["reverse_kl_change"]["mean"], sum(changes) / 3, abs_tol=1e-12)
    gap = payload["gaps"]["off_policy_minus_lmbda_1_reverse_kl"]
    per_seed = [
        next(r["reverse_kl"] for r in payload["runs"] if r["row"] == "off_policy" and r["seed"] == seed)
        - next(r["reverse_kl"] for r in payload["runs"] if r["row"] == "lmbda_1" and r["seed"] == seed)
        for seed in (0, 1, 2)
    ]
    assert math.isclose(gap["mean"], sum(per_seed) / 3, abs_tol=1e-12) and gap["seeds"] == 3
    assert set(payload["goals"]) == {
        "lmbda_1_lowers_reverse_kl_below_off_policy_by_2_standard_errors",
        "step_time_at_most_0.5x_trl_gkd_at_lmbda_1",
        "peak_memory_at_most_0.5x_trl_gkd_at_lmbda_1",
    }
    assert set(payload["summary"]["lmbda_1"]["versus_trl_gkd"]) == {"step_time_ratio", "peak_memory_ratio"}
    assert "against TRL GKDTrainer lmbda = 1" in report


def test_tiny_sorting_run_scores_exact_answers(tmp_path: Path) -> None:
    payload = main(
        [
            "--tiny",
            "--task",
            "sorting",
            "--rows",
            "off_policy,lmbda_1",
            "--output",
            str(tmp_path / "s"),
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    assert payload["teacher"]["teacher"]["steps"] == 2
    for run in payload["runs"]:
        assert 0 <= run["exact_match"] <= 1
    assert "exact_match" in payload["summary"]["lmbda_1"]
    assert set(payload["goals"]) == {"best_on_policy_or_mixed_row_beats_off_policy_exact_match"}
    assert "exact match" in (tmp_path / "s.md").read_text()


def test_sorting_problems_are_seeded_and_answered_in_order() -> None:
    rows = sorting_rows(20, seed=3)
    assert list(rows) == list(sorting_rows(20, seed=3)) and list(rows) != list(sorting_rows(20, seed=4))
    for row in rows:
        numbers = [int(word) for word in row["messages"][0]["content"].rsplit(":", 1)[1].split()]
        answer = [int(word) for word in row["messages"][1]["content"].split()]
        assert len(set(numbers)) == 5 and answer == sorted(numbers)


def test_a_chat_run_without_the_main_jobs_student_says_how_to_make_it(tmp_path: Path) -> None:
    from on_policy import BenchmarkArguments, chat_setup

    with pytest.raises(FileNotFoundError, match=r"Run `accelerate launch examples/distill_gpt2\.py` first"):
        chat_setup(BenchmarkArguments(start=str(tmp_path / "no_student")))  # refused before the teacher loads
