"""DeepSpeed ZeRO-3: the teacher as a partitioned inference engine, the fused objective on gathered heads.

Under ZeRO-3 every parameter is flattened and split over the processes; a module's weights are gathered by hooks
just before its forward (and again before its backward) and freed after. `partition_teacher` puts the frozen
teacher under the same scheme, as its own inference engine (no optimizer, no gradients, never saved): each of N
processes keeps about 1/N of it.

A ZeRO-3 split is by flat position, not by vocabulary row, so the vocabulary-parallel objective of
`hf_enhance.distillation.placement.fsdp2` does not apply. `gathered_heads_objective` gathers both LM heads for the one
call of the fused objective instead: each process briefly holds ``(V_student + V_teacher) x H`` head values, as
the logit objective's forwards already do, and never the ``[tokens, V]`` logits. The student's head is gathered by
its own ZeRO-3 hooks (the objective runs as that module's forward), so its gradient is reduce-scattered like any
layer's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from hf_enhance.distillation.placement.base import TeacherPlacement
from hf_enhance.distillation.placement.heads import gathered
from hf_enhance.distillation.placement.local import heads_objective
from hf_enhance.distillation.teacher import check_weights_present, freeze
from hf_enhance.modeling import is_deepspeed_engine
from hf_enhance.objectives.losses import DistillationOutput

__all__ = ["Zero3Placement", "gathered", "gathered_heads_objective", "partition_teacher"]

# Zero-optimization keys the teacher's engine takes from the student's config: where parameters live.
_PLACEMENT_KEYS = ("offload_param",)


def teacher_engine_config(student_config: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """A ZeRO-3 inference config for the teacher, from the run's DeepSpeed config.

    Kept: the precision sections (the teacher runs in the student's precision) and where parameters live
    (``offload_param``). Dropped: the optimizer, scheduler and batch settings, which an engine that never steps
    does not use. The bucket and persistence sizes follow the teacher's hidden size, as transformers fills the
    ``"auto"`` values of a ZeRO-3 config: parameters under ``10 * hidden_size`` values stay whole on every process.
    """
    zero = student_config.get("zero_optimization", {})
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            **{key: copy.deepcopy(zero[key]) for key in _PLACEMENT_KEYS if key in zero},
        },
    }
    for precision in ("bf16", "fp16"):
        section = student_config.get(precision, {})
        if section.get("enabled") is True:
            config[precision] = {"enabled": True}
    if hidden_size is not None:
        config["zero_optimization"].update(
            reduce_bucket_size=hidden_size * hidden_size,
            stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
            stage3_param_persistence_threshold=10 * hidden_size,
        )
    return config


def partition_teacher(teacher: nn.Module, student_config: dict[str, Any]) -> nn.Module:
    """Freeze ``teacher`` and partition it over all processes as a ZeRO-3 inference engine (returned).

    ``student_config`` is the run's DeepSpeed config (accelerate's ``deepspeed_plugin.deepspeed_config``), from
    which `teacher_engine_config` keeps the precision and parameter placement. The engine forwards attribute
    access to the teacher, so it is called and inspected like the model.
    """
    import deepspeed

    check_weights_present(teacher)
    freeze(teacher)
    if is_deepspeed_engine(teacher):
        return teacher
    hidden_size = getattr(getattr(teacher, "config", None), "hidden_size", None)
    engine, *_ = deepspeed.initialize(
        model=teacher, config=teacher_engine_config(student_config, hidden_size)
    )
    engine.eval()
    return engine


@contextmanager
def _objective_as_forward(module: nn.Module, objective: Any) -> Iterator[None]:
    """Within the block, calling ``module`` runs ``objective(module, *args)`` in place of its forward (with its
    hooks: ZeRO-3 gathers its weights for it)."""
    module.forward = lambda *args: objective(module, *args)
    try:
        yield
    finally:
        del module.forward


def gathered_heads_objective(
    student_hidden: torch.Tensor,
    student_head: nn.Linear,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Linear,
    labels: torch.Tensor | None,
    *,
    columns: int | None = None,
    **settings: Any,
) -> DistillationOutput:
    """`fused_distillation_loss` on ZeRO-3 heads, each gathered for the call (the first ``columns`` rows).

    The teacher's head is gathered read-only (`gathered`). The student's head is
    gathered by calling it: its forward is the objective for that one call, so ZeRO-3 gathers the weight before it,
    again before its backward, and reduce-scatters its gradient. Parameters ZeRO-3 does not partition pass
    through unchanged.
    """

    def objective(head: nn.Linear, hidden: torch.Tensor) -> tuple[Any, ...]:
        result = heads_objective(
            hidden, head, teacher_hidden, teacher_head, labels, columns=columns, **settings
        )
        # A tuple, not the dataclass: ZeRO-3 hooks the tensors of a module's outputs to gather it for backward.
        return tuple(getattr(result, field.name) for field in fields(result))

    with (
        gathered(teacher_head),
        _objective_as_forward(student_head, objective),
    ):
        return DistillationOutput(*student_head(student_hidden))


class Zero3Placement(TeacherPlacement):
    """The teacher partitioned as a DeepSpeed ZeRO-3 inference engine beside a ZeRO-3 student (`partition_teacher`),
    and the fused objective on the two heads gathered for its call (`gathered_heads_objective`).

    Args:
        deepspeed_config: the run's DeepSpeed config, whose precision and parameter placement the teacher's engine
            takes (`teacher_engine_config`).
    """

    head_objective = staticmethod(gathered_heads_objective)

    def __init__(self, deepspeed_config: dict[str, Any]) -> None:
        self.deepspeed_config = deepspeed_config

    def place(self, teacher: nn.Module) -> nn.Module:
        return partition_teacher(teacher, self.deepspeed_config)
