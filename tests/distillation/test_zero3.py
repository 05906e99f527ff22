"""DeepSpeed ZeRO: the teacher partitioned beside a ZeRO-3 student, the fused objective on gathered heads.

The 2-process runs use DeepSpeed on CPU processes (gloo); the first one builds DeepSpeed's shared-memory
communication op (about 40 s, once per machine).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_enhance.distillation import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation.placement import choose_placement
from hf_enhance.distillation.placement.zero3 import teacher_engine_config
from tests.distillation.distributed_teacher import check_trains_like_one_process
from tests.tiny import tiny_gpt2

pytest.importorskip("deepspeed")


def test_a_zero3_student_with_a_partitioned_teacher_trains_like_one_process(tmp_path: Path) -> None:
    ranks = check_trains_like_one_process(tmp_path, "zero3")
    assert [rank["fused"] for rank in ranks] == [True, True]  # the fused objective, no fallback to logits
    # Half of every weight matrix per process; biases and norms under 10 x hidden values stay whole.
    assert [rank["teacher_share"] for rank in ranks] == [pytest.approx(0.5, abs=0.05)] * 2


def test_a_zero2_student_uses_the_fused_objective_and_trains_like_one_process(tmp_path: Path) -> None:
    ranks = check_trains_like_one_process(tmp_path, "zero2")
    assert [rank["fused"] for rank in ranks] == [True, True]
    assert [rank["teacher_share"] for rank in ranks] == [1.0, 1.0]  # ZeRO-2 keeps every weight whole


def test_the_teacher_engine_keeps_precision_and_placement_and_drops_what_an_engine_that_never_steps_uses() -> (
    None
):
    student = {
        "bf16": {"enabled": True},
        "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW"},
        "scheduler": {"type": "WarmupLR"},
        "train_batch_size": 64,
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu"},
            "offload_optimizer": {"device": "cpu"},
        },
    }
    config = teacher_engine_config(student, hidden_size=64)
    assert config == {
        "train_micro_batch_size_per_gpu": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu"},
            "reduce_bucket_size": 4096,
            "stage3_prefetch_bucket_size": 3686,
            "stage3_param_persistence_threshold": 640,
        },
    }


@pytest.fixture
def zero3_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DistillationTrainer:
    """A trainer that reports a ZeRO-3 run (what accelerate says under a ZeRO-3 config), for the placement checks."""
    args = DistillationTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=tiny_gpt2(), teacher_model=tiny_gpt2(seed=1), args=args)
    monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
    zero3 = property(lambda state: SimpleNamespace(zero_stage=3, deepspeed_config={}))
    monkeypatch.setattr(type(trainer.accelerator.state), "deepspeed_plugin", zero3)
    return trainer


def test_an_fsdp2_sharded_teacher_in_a_zero3_run_is_refused_as_mixed_engines(
    zero3_trainer: DistillationTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hf_enhance.distillation.placement.is_sharded", lambda model: True)
    with pytest.raises(ValueError, match=r"sharded with FSDP2.*ZeRO-3.*Mixing engines.*plain teacher"):
        choose_placement(tiny_gpt2(seed=1), zero3_trainer.accelerator, fsdp=False, deepspeed=True)


def test_a_deepspeed_engine_teacher_without_zero3_is_refused_as_mixed_engines(tmp_path: Path) -> None:
    engine = type("DeepSpeedEngine", (torch.nn.Module,), {"__module__": "deepspeed.runtime.engine"})()
    args = DistillationTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=tiny_gpt2(), teacher_model=tiny_gpt2(seed=1), args=args)
    with pytest.raises(
        ValueError, match=r"DeepSpeed engine but the run does not use DeepSpeed ZeRO-3.*Mixing"
    ):
        choose_placement(engine, trainer.accelerator, fsdp=False, deepspeed=False)
