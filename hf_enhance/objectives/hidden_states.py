"""Hidden-state (intermediate-layer) distances: the pure objective of hidden-state distillation.

Student block ``i``'s output is compared with teacher block ``layer_map[i]``'s output, token by token, after an
optional learned projection that bridges different widths. Which blocks, which tokens and the projections are the
trainer's (`hf_enhance.distillation.terms.hidden`); here are the distance, the token count and the checks of a
layer map and of the term's weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HIDDEN_DISTANCES",
    "HiddenDistance",
    "check_hidden_weight",
    "check_layer_map",
    "hidden_state_loss",
    "hidden_token_count",
    "uniform_layer_map",
]

HiddenDistance = Literal["cosine", "mse"]
HIDDEN_DISTANCES: tuple[str, ...] = ("cosine", "mse")


def hidden_state_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    distance: HiddenDistance = "cosine",
    projections: Sequence[nn.Module | None] | None = None,
) -> torch.Tensor:
    """Mean per-token distance between paired hidden states, averaged over the kept tokens and over the layers.

    Args:
        student_states: one ``[..., H_s]`` tensor per mapped layer pair (e.g. ``[batch, length, H_s]``).
        teacher_states: one ``[..., H_t]`` tensor per pair, same leading dims; no gradient flows into them.
        mask: ``[...]`` boolean, True for the tokens that count (the leading dims of the states); ``None`` counts
            every token. `hidden_token_count` gives the number of kept tokens.
        distance: ``"cosine"``: 1 − cos(student, teacher) over the feature dim; ``"mse"``: the mean over features
            of (student − teacher)².
        projections: per pair, a module applied to the student states first (e.g. ``nn.Linear(H_s, H_t)``) or
            ``None``; ``None`` for no projection at all. After projection the widths must match.

    Returns:
        A float32 scalar (computed in float32 whatever the input dtype). When no token is kept it is 0 and still
        connected to the graph (no NaN).
    """
    if distance not in HIDDEN_DISTANCES:
        raise ValueError(
            f"Unknown hidden distance {distance!r}. Valid choices: {', '.join(HIDDEN_DISTANCES)}."
        )
    projections = [None] * len(student_states) if projections is None else list(projections)
    if not student_states or not len(student_states) == len(teacher_states) == len(projections):
        raise ValueError(
            f"Got {len(student_states)} student states, {len(teacher_states)} teacher states and "
            f"{len(projections)} projections; hidden_state_loss needs one of each per mapped layer pair (at "
            "least one pair). Pass the lists in layer-map order, and projections=None when no widths differ."
        )
    keep = None if mask is None else mask.reshape(-1).bool()
    with torch.autocast(student_states[0].device.type, enabled=False):
        total = sum(
            _pair_distance(student, teacher, keep, distance, projection)
            for student, teacher, projection in zip(student_states, teacher_states, projections, strict=True)
        )
    count = hidden_token_count(student_states[0], mask).clamp(min=1)
    return total / (count * len(student_states))


def hidden_token_count(student_state: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Tokens `hidden_state_loss` averages over: ``mask.sum()``, or every position of ``student_state[..., 0]``."""
    if mask is None:
        return torch.tensor(student_state[..., 0].numel(), device=student_state.device)
    return mask.bool().sum().to(student_state.device)


def _pair_distance(
    student: torch.Tensor,
    teacher: torch.Tensor,
    keep: torch.Tensor | None,
    distance: str,
    projection: nn.Module | None,
) -> torch.Tensor:
    """Sum over the kept tokens of the distance between one student / teacher state pair, in float32."""
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            f"Student hidden states {tuple(student.shape)} and teacher hidden states {tuple(teacher.shape)} "
            "differ in their leading dims: both models must run on the same tokens (same batch, same length)."
        )
    if keep is not None and keep.numel() != student[..., 0].numel():
        raise ValueError(
            f"mask has {keep.numel()} entries but the hidden states {tuple(student.shape)} have "
            f"{student[..., 0].numel()} token positions. Pass a mask of the states' leading dims ([batch, length])."
        )
    flat_student = student.reshape(-1, student.shape[-1]).float()
    flat_teacher = teacher.detach().reshape(-1, teacher.shape[-1]).to(flat_student.device, torch.float32)
    if keep is not None:
        keep = keep.to(flat_student.device)
        flat_student, flat_teacher = flat_student[keep], flat_teacher[keep]
    if projection is not None:
        flat_student = projection(flat_student).float()
    if flat_student.shape[-1] != flat_teacher.shape[-1]:
        raise ValueError(
            f"Student hidden states are {flat_student.shape[-1]} wide"
            f"{' after projection' if projection is not None else ''} but the teacher's are "
            f"{flat_teacher.shape[-1]}. Differing widths need a projection (nn.Linear(student_width, "
            "teacher_width)); DistillationTrainer builds them when both model configs give hidden_size."
        )
    if distance == "cosine":
        per_token = 1.0 - F.cosine_similarity(flat_student, flat_teacher, dim=-1, eps=1e-8)
    else:
        per_token = (flat_student - flat_teacher).pow(2).mean(-1)
    return per_token.sum()


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Student layer ``i`` ↔ teacher layer ``round((i + 1) · Lt / Ls) − 1`` (halves round up; last ↔ last).

    6 students over 12 teachers: ``[1, 3, 5, 7, 9, 11]``. More student than teacher layers map several students to
    one teacher layer (never below 0).
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError(
            f"Cannot map {num_student_layers} student layers onto {num_teacher_layers} teacher layers: both "
            "models need at least one block."
        )
    return [
        max(0, (2 * (i + 1) * num_teacher_layers + num_student_layers) // (2 * num_student_layers) - 1)
        for i in range(num_student_layers)
    ]


def check_layer_map(layer_map: Sequence[int], num_student: int, num_teacher: int, source: str) -> None:
    """Raise a ValueError unless `layer_map` holds one teacher block index in range per student block."""
    counts = f"the student has {num_student} blocks and the teacher {num_teacher}"
    example = f"e.g. {uniform_layer_map(num_student, num_teacher)} (uniform_layer_map)"
    if len(layer_map) != num_student:
        raise ValueError(
            f"{source} has {len(layer_map)} entries ({list(layer_map)}) but {counts}: it needs one teacher layer "
            f"index per student block. Pass {num_student} indices, {example}."
        )
    outside = [
        f"{layer} (student block {i})" for i, layer in enumerate(layer_map) if not 0 <= layer < num_teacher
    ]
    if outside:
        raise ValueError(
            f"{source} entries {', '.join(outside)} point outside the teacher's blocks: {counts}, so indices "
            f"must lie in 0..{num_teacher - 1}. Fix those entries, {example}."
        )


def check_hidden_weight(weight: float) -> None:
    """Raise a ValueError unless `weight` is a finite number >= 0."""
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"hidden_weight={weight} must be a finite number >= 0: it multiplies the hidden-state term added to "
            "the loss (loss = alpha·T²·KD + (1 − alpha)·CE + hidden_weight·hidden_loss). Use 0 to switch it "
            "off; 1.0 is a reasonable start with the cosine distance."
        )
