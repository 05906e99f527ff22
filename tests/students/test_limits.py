"""student_from_teacher's inputs: layer indices of any integer kind, ragged calibration rows, named limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from datasets import Dataset
from transformers import AutoModelForCausalLM

from hf_enhance import student_from_teacher
from hf_enhance.students import RECORD_KEY
from tests.students.tiny import CONFIGS, tiny_teacher, token_ids


@pytest.mark.parametrize(
    "layers", [np.array([0, 2, 3]), torch.tensor([0, 2, 3]), (0, 2, 3), [np.int64(0), 2, 3]]
)
def test_layer_indices_of_any_integer_kind_keep_those_layers(layers) -> None:
    student = student_from_teacher(tiny_teacher("llama"), layers=layers, progress=False)
    assert getattr(student.config, RECORD_KEY)["layers"] == [0, 2, 3]


@pytest.mark.parametrize("layers", [[True, 3], [0.0, 2], ["1"]])
def test_indices_that_are_not_integers_are_refused(layers) -> None:
    with pytest.raises(ValueError, match="are not teacher layer indices: pass integers"):
        student_from_teacher(tiny_teacher("llama"), layers=layers, progress=False)


def test_ragged_tokenized_rows_calibrate_in_batches_as_one_at_a_time() -> None:
    ids = token_ids(batch=6, length=12)
    rows = Dataset.from_dict({"input_ids": [row[: 6 + i].tolist() for i, row in enumerate(ids)]})
    records = [
        getattr(student_from_teacher(tiny_teacher("llama"), num_layers=2, intermediate_size=24, calibration=rows,
                                     calibration_batch_size=size, progress=False).config, RECORD_KEY)
        for size in (1, 4)
    ]  # fmt: skip
    assert records[0]["layers"] == records[1]["layers"] and records[0]["neurons"] == records[1]["neurons"]
    np.testing.assert_allclose(records[0]["layer_scores"], records[1]["layer_scores"], rtol=1e-4, atol=1e-6)


def test_calibration_longer_than_the_teachers_positions_is_refused_with_the_cut() -> None:
    teacher = tiny_teacher("llama")
    too_long = token_ids(batch=2, length=teacher.config.max_position_embeddings + 1)
    with pytest.raises(
        ValueError, match=r"has \d+ tokens, but the teacher takes at most \d+ positions.*max_length="
    ):
        student_from_teacher(teacher, num_layers=2, calibration=too_long, progress=False)


def test_a_teacher_without_weights_is_refused() -> None:
    with init_empty_weights():
        teacher = AutoModelForCausalLM.from_config(CONFIGS["llama"])
    with pytest.raises(ValueError, match="on the meta device"):
        student_from_teacher(teacher, layers=[0, 1], progress=False)
