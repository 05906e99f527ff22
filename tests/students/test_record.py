"""The record a built student carries: composed when a student is cut from a cut student, and read for the teacher
it is distilled from."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_enhance import DistillationTrainer, student_from_teacher
from hf_enhance.students import RECORD_KEY
from tests.students.tiny import tiny_teacher, token_ids
from tests.tiny import distillation_args


@pytest.fixture(scope="module")
def lineage() -> tuple:
    """A 4-layer llama teacher, a 3-layer student cut from it (layers 0, 2, 3), a 2-layer student cut from that."""
    teacher = tiny_teacher("llama")
    first = student_from_teacher(
        teacher, layers=[0, 2, 3], hidden_size=24, calibration=token_ids(), progress=False
    )
    second = student_from_teacher(
        first, layers=[1, 2], hidden_size=16, calibration=token_ids(), progress=False
    )
    return teacher, first, second


def test_a_student_of_a_student_records_the_original_teachers_layers_and_channels(lineage: tuple) -> None:
    teacher, first, second = lineage
    outer, inner = getattr(first.config, RECORD_KEY), getattr(second.config, RECORD_KEY)
    assert inner["layers"] == [2, 3] and inner["teacher_num_layers"] == 4  # of the original teacher
    assert inner["cut_from"]["layers"] == [1, 2] and inner["cut_from"]["teacher_num_layers"] == 3
    assert inner["hidden_channels"] == [
        outer["hidden_channels"][c] for c in inner["cut_from"]["hidden_channels"]
    ]
    assert inner["teacher_hidden_size"] == teacher.config.hidden_size


@pytest.mark.parametrize(("teacher_index", "expected"), [(0, [2, 3]), (1, [1, 2])])
def test_the_default_layer_map_follows_the_teacher_it_is_distilled_from(
    lineage: tuple, tmp_path: Path, teacher_index: int, expected: list[int]
) -> None:
    teacher = lineage[teacher_index]
    trainer = DistillationTrainer(model=lineage[2], teacher_model=teacher,
                                  args=distillation_args(tmp_path, hidden_weight=1.0))  # fmt: skip
    assert trainer.hidden_layer_map == expected
    # The projections start as the recorded channel scatter of that teacher: one 1 per student channel.
    weight = trainer.hidden_projections[0].weight
    assert weight.shape == (teacher.config.hidden_size, 16) and weight.sum().item() == 16


def test_a_teacher_the_record_does_not_describe_is_refused(lineage: tuple, tmp_path: Path) -> None:
    unrelated = student_from_teacher(tiny_teacher("llama"), layers=[0, 1], progress=False)  # 2 blocks
    with pytest.raises(
        ValueError, match=r"cut from a 4-layer model .* or a 3-layer model .*teacher has 2 blocks"
    ):
        DistillationTrainer(model=lineage[2], teacher_model=unrelated,
                            args=distillation_args(tmp_path, hidden_weight=1.0))  # fmt: skip
