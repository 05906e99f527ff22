"""`LocalPlacement`: the whole teacher on this process's device, or spread over devices by ``device_map``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hf_enhance.distillation.placement.base import TeacherPlacement
from hf_enhance.objectives.fused import fused_distillation_loss
from hf_enhance.objectives.losses import DistillationOutput

__all__ = ["LocalPlacement", "heads_objective"]


def heads_objective(
    student_hidden: torch.Tensor,
    student_head: nn.Linear,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Linear,
    labels: torch.Tensor | None,
    *,
    columns: int | None = None,
    **settings: Any,
) -> DistillationOutput:
    """`fused_distillation_loss` on two whole LM heads, cut to their first ``columns`` rows (padding rows out)."""
    rows = slice(None, columns)
    return fused_distillation_loss(
        student_hidden,
        student_head.weight[rows],
        teacher_hidden,
        teacher_head.weight[rows],
        labels,
        student_head_bias=None if student_head.bias is None else student_head.bias[rows],
        teacher_head_bias=None if teacher_head.bias is None else teacher_head.bias[rows],
        **settings,
    )


class LocalPlacement(TeacherPlacement):
    """The teacher whole on ``device`` (each process its own copy), or left where ``device_map`` put it.

    Args:
        device: where the teacher goes; None leaves it where it is (a teacher loaded with ``device_map``).
        fsdp1: the student is wrapped by FSDP1, which shards its LM head: the fused objective, which reads the
            head's full weight, does not apply.
    """

    head_objective = staticmethod(heads_objective)

    def __init__(self, device: torch.device | None, fsdp1: bool = False) -> None:
        self.device = device
        self.fsdp1 = fsdp1

    def place(self, teacher: nn.Module) -> nn.Module:
        return teacher if self.device is None else teacher.to(self.device)

    def fused_problem(self, student: nn.Module, teacher: nn.Module) -> str | None:
        if self.fsdp1:
            return "FSDP1 shards the LM head, whose full weight the fused loss reads"
        return super().fused_problem(student, teacher)
