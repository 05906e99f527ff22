"""The Trainer under accelerate's FSDP2 and DeepSpeed ZeRO-3 on GPUs, against one process with the whole teacher.

accelerate enables FSDP only on GPUs, so these run on a GPU machine (all its GPUs, NCCL) and are skipped
elsewhere; the CPU tests in test_sharded.py and test_zero3.py cover the same code with DDP and DeepSpeed on gloo.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distillation.distributed_teacher import check_trains_like_one_process

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU: accelerate's FSDP is GPU-only"
)


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_the_trainer_shards_the_teacher_and_trains_like_one_process(tmp_path: Path, engine: str) -> None:
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    processes = torch.cuda.device_count()
    ranks = check_trains_like_one_process(tmp_path, engine, processes=processes, gpu=True)
    assert all(rank["fused"] for rank in ranks)
    assert [rank["teacher_share"] for rank in ranks] == [pytest.approx(1 / processes, abs=0.05)] * processes
