"""benchmarks/distill_step.py on tiny models: every method trains, the objectives agree, the results are written."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from distill_step import METHODS, RoundRobin, main, rotated_schedule


def run_tiny(tmp_path: Path, *flags: str) -> dict:
    payload = main(["--tiny", "--output", str(tmp_path / "distill_step"), *flags])
    assert json.loads((tmp_path / "distill_step.json").read_text()) == json.loads(json.dumps(payload))
    assert "| hf_enhance_fused |" in (tmp_path / "distill_step.md").read_text()
    return payload


def test_every_method_trains_and_the_objectives_agree_on_the_first_step(tmp_path: Path) -> None:
    payload = run_tiny(tmp_path, "--memory", "false")
    rows = {row["method"]: row for row in payload["summary"]["rows"]}
    assert list(rows) == list(METHODS)
    for row in rows.values():
        assert len(row["times_s"]) == payload["settings"]["timed_steps"]
        assert row["median_s"] > 0
    assert rows["floor"]["time_vs_floor"] == 1.0
    # Same student, same batch: the CE methods match each other, the JSD methods match each other ...
    assert rows["student_ce"]["first_loss"] == pytest.approx(rows["floor"]["first_loss"], rel=1e-6)
    for method in ("hf_enhance_logits", "trl_distillation"):
        assert rows[method]["first_loss_vs_fused"] == pytest.approx(1.0, rel=1e-5)
    # ... and GKDTrainer's differs only by its token count (B x L labels for B x (L - 1) predictions).
    seq_len = payload["settings"]["seq_len"]
    assert rows["trl_gkd"]["first_loss_vs_fused"] == pytest.approx((seq_len - 1) / seq_len, rel=1e-5)
    assert {c["theirs"] for c in payload["summary"]["comparisons"]} == {"trl_gkd", "trl_distillation"}


@pytest.mark.slow
def test_memory_is_measured_in_fresh_processes(tmp_path: Path) -> None:
    payload = run_tiny(tmp_path, "--methods", "floor", "hf_enhance_fused", "trl_gkd")
    rows = {row["method"]: row for row in payload["summary"]["rows"]}
    for method, row in rows.items():
        assert row["peak_mib"] > 0
        # The fresh process trains the same first step on the same batch.
        assert payload["memory_first_losses"][method] == pytest.approx(row["first_loss"], rel=1e-5)
    assert "memory" in payload["summary"]["comparisons"][0]


def test_schedule_rotates_the_order_each_round() -> None:
    schedule = rotated_schedule(["a", "b", "c"], rounds=3)
    assert schedule == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_round_robin_runs_one_thread_at_a_time_in_schedule_order() -> None:
    names = ["a", "b", "c"]
    baton = RoundRobin(rotated_schedule(names, rounds=2))
    ran: list[str] = []

    def worker(name: str) -> None:
        for _ in range(2):
            baton.wait(name)
            ran.append(name)
            baton.hand_over()
        baton.finish(name)

    threads = [threading.Thread(target=worker, args=(name,)) for name in reversed(names)]
    for thread in threads:
        thread.start()
    baton.open()
    for thread in threads:
        thread.join(timeout=10)
    assert ran == rotated_schedule(names, rounds=2)


def test_a_failure_wakes_the_waiting_threads() -> None:
    baton = RoundRobin(["a", "b"])
    baton.open()
    baton.fail(ValueError("a broke"))
    with pytest.raises(RuntimeError, match="another method failed"):
        baton.wait("b")
