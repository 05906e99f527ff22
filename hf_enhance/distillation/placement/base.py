"""`TeacherPlacement`: where the frozen teacher lives, and what follows from it for the objective.

One placement per trainer, chosen once from the run's engine (`choose_placement`): the teacher whole on each
device or spread by ``device_map`` (`LocalPlacement`), sharded with FSDP2 (`ShardedPlacement`), or partitioned
as a DeepSpeed ZeRO-3 engine (`Zero3Placement`). It owns placing the teacher, whether the fused objective is
collective (one result over every rank's tokens), why the fused objective cannot apply, how the per-rank
decision to use it is agreed on, and which head objective runs on the two bypassed heads. A new engine (tensor
parallel, a teacher in another process) is one new subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from hf_enhance.distillation.placement.heads import head_bypassed, plain_lm_head
from hf_enhance.modeling import logits_of
from hf_enhance.objectives.losses import DistillationOutput

__all__ = ["TeacherPlacement"]


class TeacherPlacement:
    """Where the teacher lives; subclasses say how it is placed (`place`) and which `head_objective` applies."""

    head_objective: Callable[..., DistillationOutput]
    """The fused objective on both models' final hidden states and LM heads (modules), over the first ``columns``
    ids: ``head_objective(student_hidden, student_head, teacher_hidden, teacher_head, labels, columns=...,
    **settings)``. Local: `heads_objective`; FSDP2: `vocab_parallel_objective`; ZeRO-3: `gathered_heads_objective`."""

    collective: bool = False
    """The fused objective is computed over every rank's tokens at once (the same result on each rank), so every
    rank must take the same path at every step, and the step weights count all ranks' tokens."""

    def place(self, teacher: nn.Module) -> nn.Module:
        """Freeze-placed teacher: moved, sharded or wrapped as this placement needs (returned)."""
        raise NotImplementedError

    def fused_problem(self, student: nn.Module, teacher: nn.Module) -> str | None:
        """Why the fused objective cannot run with these (unwrapped) models here; None when it can."""
        if plain_lm_head(student) is None or plain_lm_head(teacher) is None:
            return "a model's head is not a plain nn.Linear (adapted, custom) or its config post-processes logits"
        return None

    def agree(self, supported: bool, accelerator: Any) -> bool:
        """The decision to use the fused objective, as every rank must take it (default: each its own)."""
        return supported

    def fused_objective(
        self,
        model: nn.Module,
        student: nn.Module,
        teacher: nn.Module,
        inputs: dict[str, Any],
        labels: torch.Tensor | None,
        *,
        autocast: Callable[[], AbstractContextManager[Any]],
        columns: int | None,
        **settings: Any,
    ) -> DistillationOutput:
        """Causal LM objective from hidden states and head weights, chunked: no ``[tokens, vocab]`` tensor.

        ``model`` is what the trainer calls (possibly wrapped), ``student`` its unwrapped model whose head is
        bypassed; the teacher runs under ``autocast()`` and no gradient. Position t predicts labels[:, t + 1].
        """
        with head_bypassed(student) as student_head:
            student_hidden = logits_of(model(**inputs))
        with torch.no_grad(), autocast(), head_bypassed(teacher) as teacher_head:
            teacher_hidden = logits_of(teacher(**inputs))
        return self.head_objective(
            student_hidden[:, :-1],
            student_head,
            teacher_hidden[:, :-1],
            teacher_head,
            None if labels is None else labels[:, 1:],
            columns=columns,
            **settings,
        )
