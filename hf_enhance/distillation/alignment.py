"""`OutputAlignment`: how the student's and the teacher's outputs line up with each other and with the labels."""

from __future__ import annotations

import torch

from hf_enhance.distillation.teacher import shared_output_size

__all__ = ["OutputAlignment"]


class OutputAlignment:
    """The task (causal LMs shift by one token) and the columns both models predict (padding rows trimmed).

    Both are known from the models when their classes and heads say; otherwise they are read off the first
    logits (a plain `nn.Module` student): ``[B, C]`` logits are classification, and the column counts are checked
    then, once.

    Args:
        task: ``causal_lm``, ``classification``, ``token_classification``, or None (unknown until the logits).
        student_size, teacher_size: the models' output columns, when they can be read off (else None).
        tokenizer_size: the shared tokenizer's size, which tells embedding padding from a vocabulary mismatch.
    """

    def __init__(
        self,
        task: str | None,
        student_size: int | None,
        teacher_size: int | None,
        tokenizer_size: int | None,
    ) -> None:
        self.task = task
        self.tokenizer_size = tokenizer_size
        self.columns: int | None = None
        self.checked = None not in (student_size, teacher_size)
        if self.checked:
            self.columns = shared_output_size(
                student_size, teacher_size, task or "classification", tokenizer_size
            )

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None,
        student: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Shift for causal LMs and trim padded columns; ``student`` names the student's class for errors."""
        if not self.checked:
            self.columns = shared_output_size(
                student_logits.shape[-1],
                teacher_logits.shape[-1],
                self.task or "classification",
                self.tokenizer_size,
            )
            self.checked = True
        if self.task is None:
            if student_logits.dim() != 2:
                raise ValueError(
                    f"The student returns logits of shape {tuple(student_logits.shape)} and its class "
                    f"({student}) does not say how they align with the labels. Set "
                    "DistillationTrainingArguments(distillation_task='causal_lm') to shift by one token, or "
                    "'token_classification' to compare position by position."
                )
            self.task = "classification"
        if self.task == "causal_lm":
            student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
            labels = labels[:, 1:] if labels is not None else None
        return student_logits[..., : self.columns], teacher_logits[..., : self.columns], labels
