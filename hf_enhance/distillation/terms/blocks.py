"""The blocks the hidden-state term compares: finding them, pairing them, capturing their outputs, bridging widths.

Student block ``i``'s output is compared with teacher block ``layer_map[i]``'s output. The outputs are captured
with forward hooks on just those blocks during the forwards that already run (`captured_block_outputs`), never
with ``output_hidden_states``, which would keep every layer's states. The distance itself is
`hf_enhance.objectives.hidden_state_loss`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hf_enhance.modeling import repeated_blocks, unwrap
from hf_enhance.objectives.hidden_states import uniform_layer_map
from hf_enhance.students.record import RECORD_KEY, record_for_teacher


def default_layer_map(student: nn.Module, teacher: nn.Module) -> list[int]:
    """The teacher layers the student was built from (``config.hf_enhance_student["layers"]``, the part that
    describes this teacher), else uniform."""
    teacher_layers = len(block_stack(teacher, "teacher"))
    kept = (record_for_teacher(student, teacher_layers) or {}).get("layers")
    if kept is not None:
        return [int(layer) for layer in kept]
    return uniform_layer_map(len(block_stack(student, "student")), teacher_layers)


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
    record = record_for_teacher(student, len(block_stack(teacher, "teacher"))) or {}
    channels = (
        record.get("hidden_channels") if record.get("teacher_hidden_size") in (None, teacher_width) else None
    )
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
            f"config.{RECORD_KEY}['hidden_channels'] must list one teacher channel in 0..{teacher_width - 1} "
            f"per student channel ({student_width}), but it has {len(channels)} entries"
            f"{f' and out-of-range values {outside[:5]}' if outside else ''}. Rebuild the student config, or "
            "drop the key to start the projections from the default initialisation."
        )
    scatter = torch.zeros(teacher_width, student_width)
    scatter[channels, range(student_width)] = 1.0
    return scatter
