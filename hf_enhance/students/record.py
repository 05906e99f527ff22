"""The record a built student carries in its config: which teacher layers and hidden channels it kept, and why.

`student_from_teacher` writes it (`build_record`); the distillation trainer reads it for its default hidden-state layer map and
to start the width projections aligned. It lives with its writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_enhance.modeling import unwrap

if TYPE_CHECKING:
    from hf_enhance.students.build import _Plan, _Teacher
    from hf_enhance.students.calibration import Batches
    from hf_enhance.students.importance import Importance

__all__ = ["RECORD_KEY", "build_record", "record_for_teacher", "student_record"]

RECORD_KEY = "hf_enhance_student"
"""Config attribute (a dict) written by the student builder: ``layers`` = the teacher layers the student kept,
in order; ``hidden_channels`` = the teacher hidden channels it kept (one per student channel). A student cut from a
built student records both relative to the original teacher, and under ``cut_from`` relative to the model it was
cut from."""
_RELATIVE = ("teacher", "teacher_num_layers", "layers", "teacher_hidden_size", "hidden_channels")


def student_record(model: nn.Module) -> dict[str, Any]:
    """The ``hf_enhance_student`` dict of the (PEFT-unwrapped) model's config; empty when it has none."""
    config = getattr(unwrap(model), "config", None)
    return dict(getattr(config, RECORD_KEY, None) or {})


def record_for_teacher(student: nn.Module, teacher_layers: int) -> dict[str, Any] | None:
    """The part of the student's record that describes ``teacher`` (its block count): the original teacher's, or
    the model it was cut from; None without a record. A record of neither is refused: its layers would pair the
    student with the wrong teacher blocks."""
    record = student_record(student)
    if not record:
        return None
    views = [record, *([record["cut_from"]] if record.get("cut_from") else [])]
    for view in views:
        if view.get("teacher_num_layers") in (None, teacher_layers):
            return view
    cut = " or ".join(f"a {view['teacher_num_layers']}-layer model ({view.get('teacher')})" for view in views)
    raise ValueError(
        f"The student's config.{RECORD_KEY} says it was cut from {cut}, but the teacher has {teacher_layers} blocks: "
        "the recorded layers would pair the student with the wrong teacher blocks. Distil from the model it was cut "
        "from, or pass hidden_layer_map= (one teacher block index per student block)."
    )


def _composed(parent: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (relative to a built student) made relative to that student's own teacher, the step kept under
    ``cut_from``."""
    layers = [parent["layers"][layer] for layer in record["layers"]]
    channels, parent_channels = record["hidden_channels"], parent.get("hidden_channels")
    if parent_channels is not None:
        channels = parent_channels if channels is None else [parent_channels[c] for c in channels]
    return {
        **record,
        "teacher": parent.get("teacher"),
        "teacher_num_layers": parent.get("teacher_num_layers"),
        "layers": layers,
        "teacher_hidden_size": parent.get("teacher_hidden_size"),
        "hidden_channels": channels,
        "cut_from": {key: record[key] for key in _RELATIVE},
    }


def build_record(
    teacher: _Teacher,
    plan: _Plan,
    strategy: str | None,
    layer_scores: list[float] | None,
    importance: Importance | None,
    batches: Batches | None,
) -> dict[str, Any]:
    """What was kept and why, as plain JSON types (it is saved in the student's config.json). Cut from a student
    that was itself built, the layers and hidden channels are recorded relative to the original teacher."""

    def per_layer(values: dict[int, torch.Tensor]) -> list[list[int]] | None:
        return [values[layer].tolist() for layer in plan.layers] if values else None

    def rounded(values: Sequence[float] | torch.Tensor) -> list[float]:
        return [round(float(value), 6) for value in values]

    head_scores = None
    if importance is not None and importance.query_heads is not None and plan.kv_groups:
        group = teacher.heads // teacher.kv_heads
        head_scores = [
            rounded(importance.query_heads[layer].reshape(teacher.kv_heads, group).sum(1))
            for layer in plan.layers
        ]
    record = {
        "teacher": teacher.model.config.name_or_path or type(teacher.model).__name__,
        "teacher_num_layers": len(teacher.stack),
        "layers": list(plan.layers),
        "layer_strategy": strategy,
        "layer_scores": None if layer_scores is None else rounded(layer_scores),
        "block_influence": None if importance is None else rounded(importance.block_influence),
        "teacher_intermediate_size": teacher.intermediate or None,
        "neurons": per_layer(plan.neurons),
        "kv_groups": per_layer(plan.kv_groups),
        "kv_group_scores": head_scores,
        "teacher_hidden_size": teacher.hidden,
        "hidden_channels": None if plan.channels is None else plan.channels.tolist(),
        "calibration": None if batches is None else {"batches": len(batches), "tokens": batches.tokens},
    }
    parent = student_record(teacher.model)
    return record if parent.get("layers") is None else _composed(parent, record)
