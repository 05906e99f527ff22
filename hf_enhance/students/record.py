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

__all__ = ["RECORD_KEY", "build_record", "student_record"]

RECORD_KEY = "hf_enhance_student"
"""Config attribute (a dict) written by the student builder: ``layers`` = the teacher layers the student kept,
in order; ``hidden_channels`` = the teacher hidden channels it kept (one per student channel)."""


def student_record(model: nn.Module) -> dict[str, Any]:
    """The ``hf_enhance_student`` dict of the (PEFT-unwrapped) model's config; empty when it has none."""
    config = getattr(unwrap(model), "config", None)
    return dict(getattr(config, RECORD_KEY, None) or {})


def build_record(
    teacher: _Teacher,
    plan: _Plan,
    strategy: str | None,
    layer_scores: list[float] | None,
    importance: Importance | None,
    batches: Batches | None,
) -> dict[str, Any]:
    """What was kept and why, as plain JSON types (it is saved in the student's config.json)."""

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
    return {
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
