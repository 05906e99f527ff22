"""choose_placement: one placement per run, from the run's engine and the teacher as given."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hf_enhance.distillation.placement import (
    LocalPlacement,
    ShardedPlacement,
    Zero3Placement,
    choose_placement,
)
from tests.tiny import tiny_gpt2


def _accelerator(zero_stage: int | None = None, fsdp2: bool = False) -> SimpleNamespace:
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage, deepspeed_config={"a": 1})
    return SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=plugin), device=torch.device("cpu"), is_fsdp2=fsdp2
    )


def test_one_process_places_the_teacher_whole_on_the_device() -> None:
    placement = choose_placement(tiny_gpt2(), _accelerator(), fsdp=False, deepspeed=False)
    assert isinstance(placement, LocalPlacement) and placement.device == torch.device("cpu")
    assert not placement.collective


def test_a_device_map_teacher_stays_where_it_is() -> None:
    teacher = tiny_gpt2()
    teacher.hf_device_map = {"": "cpu"}
    placement = choose_placement(teacher, _accelerator(), fsdp=False, deepspeed=False)
    assert isinstance(placement, LocalPlacement) and placement.device is None
    assert placement.place(teacher) is teacher


def test_fsdp2_shards_the_teacher_and_makes_the_objective_collective() -> None:
    placement = choose_placement(tiny_gpt2(), _accelerator(fsdp2=True), fsdp=True, deepspeed=False)
    assert isinstance(placement, ShardedPlacement) and placement.collective


def test_fsdp1_keeps_the_teacher_local_and_says_why_the_fused_objective_cannot_run() -> None:
    placement = choose_placement(tiny_gpt2(), _accelerator(), fsdp=True, deepspeed=False)
    assert isinstance(placement, LocalPlacement)
    assert "FSDP1" in placement.fused_problem(tiny_gpt2(), tiny_gpt2(seed=1))


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_1_and_2_keep_the_teacher_local(stage: int) -> None:
    placement = choose_placement(tiny_gpt2(), _accelerator(zero_stage=stage), fsdp=False, deepspeed=True)
    assert isinstance(placement, LocalPlacement) and placement.fused_problem(tiny_gpt2(), tiny_gpt2()) is None


def test_zero3_partitions_the_teacher_with_the_runs_config() -> None:
    placement = choose_placement(tiny_gpt2(), _accelerator(zero_stage=3), fsdp=False, deepspeed=True)
    assert isinstance(placement, Zero3Placement) and placement.deepspeed_config == {"a": 1}
    assert not placement.collective


def test_a_teacher_sharded_by_the_user_is_kept_sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hf_enhance.distillation.placement.is_sharded", lambda model: True)
    placement = choose_placement(tiny_gpt2(), _accelerator(), fsdp=False, deepspeed=False)
    assert isinstance(placement, ShardedPlacement)
