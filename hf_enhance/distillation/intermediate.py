"""Intermediate-layer (hidden-state) distillation: the outputs of chosen student blocks against teacher blocks.

Student block ``i``'s output is compared with teacher block ``layer_map[i]``'s output, token by token, after an
optional learned projection that bridges different widths. The outputs are captured with forward hooks on just
those blocks during the forwards that already run (`captured_block_outputs`), never with
``output_hidden_states``, which would keep every layer's states. `hidden_state_loss` is the pure objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hf_enhance.distillation.teacher import unwrap
from hf_enhance.modeling import repeated_blocks

HiddenDistance = Literal["cosine", "mse"]
HIDDEN_DISTANCES: tuple[str, ...] = ("cosine", "mse")

STUDENT_CONFIG_KEY = "hf_enhance_student"
"""Config attribute (a dict) written by the student builder: ``layers`` = the teacher layers the student kept,
in order; ``hidden_channels`` = the teacher hidden channels it kept (one per student channel)."""


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


def student_build_info(model: nn.Module) -> dict[str, Any]:
    """The ``hf_enhance_student`` dict of the (PEFT-unwrapped) model's config; empty when it has none."""
    config = getattr(unwrap(model), "config", None)
    return dict(getattr(config, STUDENT_CONFIG_KEY, None) or {})


def default_layer_map(student: nn.Module, teacher: nn.Module) -> list[int]:
    """The teacher layers the student was built from (``config.hf_enhance_student["layers"]``), else uniform."""
    kept = student_build_info(student).get("layers")
    if kept is not None:
        return [int(layer) for layer in kept]
    return uniform_layer_map(len(block_stack(student, "student")), len(block_stack(teacher, "teacher")))


def block_stack(model: nn.Module, role: str) -> nn.ModuleList:
    """The one stack of repeated transformer blocks of the (PEFT-unwrapped) model."""
    base = unwrap(model)
    stacks = repeated_blocks(base)
    if len(stacks) != 1:
        found = ", ".join(f"{name} ({len(stack)} blocks)" for name, stack in stacks.items()) or "none"
        raise ValueError(
            f"Hidden-state distillation compares transformer blocks, so the {role} ({type(base).__name__}) needs "
            f"exactly one stack of repeated blocks (an nn.ModuleList of layers), but it has {len(stacks)}: "
            f"{found}. Use decoder-only or encoder-only models, or set hidden_weight=0."
        )
    return next(iter(stacks.values()))


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


@contextmanager
def captured_block_outputs(blocks: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Within the block, forwards fill ``outputs[i]`` with the hidden states that ``blocks[i]`` returned.

    A block may return a tensor or a tuple whose first element is the hidden states; entries stay ``None`` for
    blocks that did not run. The hooks are removed on exit, also when the block raises.
    """
    outputs: list[torch.Tensor | None] = [None] * len(blocks)

    def recorder(index: int) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            outputs[index] = output[0] if isinstance(output, (tuple, list)) else output

        return record

    handles = [block.register_forward_hook(recorder(i)) for i, block in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def hidden_width(model: nn.Module) -> int | None:
    """``hidden_size`` of the (PEFT-unwrapped) model's (text) config; None when it has none."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    width = getattr(config, "hidden_size", None)
    return None if width is None else int(width)


def build_projections(student: nn.Module, teacher: nn.Module, num_layers: int) -> nn.ModuleList | None:
    """One bias-free ``nn.Linear(student_width, teacher_width)`` per mapped layer when the widths differ.

    With ``config.hf_enhance_student["hidden_channels"]`` (the teacher channel each student channel was taken
    from) every projection starts as that scatter matrix (student channel k → teacher channel channels[k]), so
    a student cut from the teacher starts out aligned; otherwise `nn.Linear`'s default init. None when the
    widths match or either is unknown.
    """
    student_width, teacher_width = hidden_width(student), hidden_width(teacher)
    if student_width is None or teacher_width is None or student_width == teacher_width:
        return None
    projections = nn.ModuleList(
        nn.Linear(student_width, teacher_width, bias=False) for _ in range(num_layers)
    )
    channels = student_build_info(student).get("hidden_channels")
    if channels is not None:
        scatter = _scatter_matrix([int(c) for c in channels], student_width, teacher_width)
        with torch.no_grad():
            for projection in projections:
                projection.weight.copy_(scatter)
    return projections


def _scatter_matrix(channels: list[int], student_width: int, teacher_width: int) -> torch.Tensor:
    """``[teacher_width, student_width]`` with a 1 at (channels[k], k): student channel k → teacher channel."""
    outside = [c for c in channels if not 0 <= c < teacher_width]
    if len(channels) != student_width or outside:
        raise ValueError(
            f"config.{STUDENT_CONFIG_KEY}['hidden_channels'] must list one teacher channel in 0..{teacher_width - 1} "
            f"per student channel ({student_width}), but it has {len(channels)} entries"
            f"{f' and out-of-range values {outside[:5]}' if outside else ''}. Rebuild the student config, or "
            "drop the key to start the projections from the default initialisation."
        )
    scatter = torch.zeros(teacher_width, student_width)
    scatter[channels, range(student_width)] = 1.0
    return scatter


def check_hidden_weight(weight: float) -> None:
    """Raise a ValueError unless `weight` is a finite number >= 0."""
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"hidden_weight={weight} must be a finite number >= 0: it multiplies the hidden-state term added to "
            "the loss (loss = alpha·T²·KD + (1 − alpha)·CE + hidden_weight·hidden_loss). Use 0 to switch it "
            "off; 1.0 is a reasonable start with the cosine distance."
        )
