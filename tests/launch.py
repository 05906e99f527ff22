"""Run a test module in 2 CPU processes (torchrun, gloo) and fail cleanly when they hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_two_processes(
    module: str,
    *args: str,
    timeout: float,
    meanwhile: Callable[[], Any] | None = None,
    hang_message: str = "the two processes did not finish",
    processes: int = 2,
) -> Any:
    """Run `python -m module *args` in `processes` processes (2 by default); returns what `meanwhile()` (run here
    while they work) returns.

    Fails the test with the processes' output when they exit non-zero, and with `hang_message` when they do not
    finish in `timeout` seconds (torchrun passes SIGTERM on to its workers; a second timeout kills the group).
    """
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(_free_port()), "-m", module, *args]  # fmt: skip
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        result = meanwhile() if meanwhile is not None else None
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(hang_message)
    assert proc.returncode == 0, output[-3000:]
    print(output[-3000:])  # shown by pytest when a later assertion fails
    return result


def finish_worker() -> NoReturn:
    """End a process started by `torchrun_two_processes` once its results are written: wait for the other rank,
    then exit at once, without tearing gloo down.

    Torn down at interpreter exit, gloo aborts a rank in about one run in five ("terminate called without an
    active exception": a gloo thread frees pending work while Python finalises, pytorch/pytorch#190489), and a
    rank can be left waiting in destroy_process_group for one that aborted: both were CI flakes.
    """
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
