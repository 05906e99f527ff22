"""All processes of a multi-process run stop at the same step (2 CPU processes, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.launch import torchrun_two_processes


def test_all_ranks_stop_together(tmp_path: Path) -> None:
    torchrun_two_processes(
        "tests.training.ddp_early_stop",
        str(tmp_path),
        timeout=120,
        hang_message="the processes did not finish: one stopped while the other waited in a collective",
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    # 16 rows per process, batch 8: 2 steps per epoch; process 1 stops after its second evaluation
    assert [r["step"] for r in results] == [4, 4]
    assert "did not improve on its best 0.1" in results[1]["reason"]
    assert results[0]["reason"] == "another process stopped training at step 4."
