"""All processes of a multi-process run stop at the same step (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_all_ranks_stop_together(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "tests.training.ddp_early_stop", str(tmp_path)]  # fmt: skip
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(
                signal.SIGTERM
            )  # torchrun passes it on to its workers, which run in their own sessions
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the processes did not finish: one stopped while the other waited in a collective")
    assert proc.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    # 16 rows per process, batch 8: 2 steps per epoch; process 1 stops after its second evaluation
    assert [r["step"] for r in results] == [4, 4]
    assert "did not improve on its best 0.1" in results[1]["reason"]
    assert results[0]["reason"] == "another process stopped training at step 4."
