"""A teacher sharded beside the student with FSDP2, and the fused objective on vocabulary-sharded heads.

`shard_teacher` applies FSDP2's `fully_shard` to each decoder block of a frozen teacher and to the teacher itself,
resharding after every forward: each of N processes keeps about 1/N of the weights and gathers one block at a
time. FSDP2 shards every parameter along dim 0, so each rank's share of the ``[V, H]`` LM head is a contiguous
slice of vocabulary rows. `vocab_parallel_distillation_loss` computes the fused objective on exactly those
slices: every rank evaluates the tokens of all ranks on its own columns, the softmax statistics and the per-token
divergences are combined with all-reduce, and the result equals `fused_distillation_loss` on the gathered batch
and full heads. The heads are never gathered: head-related memory per rank (head weights, the float32 gradient
accumulator and the ``[chunk, V]`` buffers) is about 1/N of the single-process objective's; what travels is the
``[tokens, H]`` hidden states (all-gather) and their gradient (all-reduce).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard

from hf_enhance.distillation.placement.base import TeacherPlacement
from hf_enhance.distillation.teacher import check_weights_present, freeze
from hf_enhance.modeling import is_deepspeed_engine, unwrap
from hf_enhance.objectives.fused import check_fused_inputs, default_chunk_size, fused_objective
from hf_enhance.objectives.losses import (
    DistillationOutput,
    DivergenceKind,
    check_label_ids,
)
from hf_enhance.objectives.settings import LossSettings
from hf_enhance.objectives.vocab import ShardedVocabulary

__all__ = [
    "ShardedPlacement",
    "is_sharded",
    "shard_teacher",
    "vocab_parallel_distillation_loss",
    "vocab_parallel_objective",
]


def _require_process_group(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs torch.distributed to be initialised: it splits the work over the processes of a "
            "group. Launch with `torchrun`/`accelerate launch` and call torch.distributed.init_process_group() "
            "first (the Trainer does this for you), or use fused_distillation_loss in a single process."
        )


def _agree(error: Exception | None, group: dist.ProcessGroup | None, device: torch.device) -> None:
    """Raise on every rank when any rank's inputs were refused, instead of leaving the others in a collective."""
    failed = torch.tensor([0 if error is None else 1], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=group)
    if error is not None:
        raise error
    if int(failed):
        raise RuntimeError(
            "Another rank refused its inputs to vocab_parallel_distillation_loss; its error says what is wrong."
        )


def vocab_parallel_distillation_loss(
    student_hidden: torch.Tensor,
    student_head_shard: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_shard: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    chunk_size: int | None = None,
    ignore_index: int = -100,
) -> DistillationOutput:
    """`fused_distillation_loss` over the tokens of every rank of ``group``, each rank holding a slice of the heads.

    Rank r passes its own tokens (``student_hidden``, ``teacher_hidden``, ``labels``, any count, also 0) and rows
    ``[start_r, start_r + size_r)`` of both head weights (and biases), the slices following each other in rank
    order: what FSDP2's dim-0 sharding gives each rank of an ``[V, H]`` head, any V (uneven splits included).

    Returns the objective over all ranks' kept tokens (the same value on every rank; ``num_tokens`` counts them
    all), equal to `fused_distillation_loss` on the concatenated tokens and the full heads. Backward gives this
    rank's hidden states their exact gradient and this rank's student head rows (and bias) theirs, over all
    tokens. To train under data parallelism, where gradients are averaged over ranks, scale the loss by the
    world size (the gradients of the head rows and of the hidden states then average to the exact values).
    """
    _require_process_group("vocab_parallel_distillation_loss")
    LossSettings(alpha, temperature, kind, beta, ignore_index)
    device = student_hidden.device
    sizes = torch.tensor([student_head_shard.shape[0], teacher_head_shard.shape[0]], device=device)
    everyone = [torch.zeros_like(sizes) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, sizes, group=group)
    rows = [tuple(int(v) for v in pair) for pair in everyone]
    error: Exception | None = None
    try:
        if any(student != teacher for student, teacher in rows):
            raise ValueError(
                "The student and teacher head slices differ in size on some rank (rows per rank, student vs "
                f"teacher: {rows}). Each rank must hold the same vocabulary rows of both heads: shard both the "
                "same way (FSDP2 shards every [V, H] head along V) over the same vocabulary size."
            )
        check_fused_inputs(
            student_hidden,
            student_head_shard,
            student_head_bias,
            teacher_hidden,
            teacher_head_shard,
            teacher_head_bias,
            labels,
            chunk_size,
        )
        if labels is not None:
            check_label_ids(labels[labels != ignore_index], sum(student for student, _ in rows))
    except ValueError as caught:
        error = caught
    _agree(error, group, device)
    start = sum(student for student, _ in rows[: dist.get_rank(group)])
    if chunk_size is None:  # sized by the whole vocabulary: each rank's buffers are then 1/N of one process's
        chunk_size = default_chunk_size(sum(student for student, _ in rows), device)
    return fused_objective(
        (student_hidden, student_head_shard, student_head_bias),
        (teacher_hidden, teacher_head_shard, teacher_head_bias),
        labels,
        ShardedVocabulary(start, group),
        alpha=alpha,
        temperature=temperature,
        kind=kind,
        beta=beta,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
    )


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 manages the model's parameters (`fully_shard` was applied to it)."""
    return isinstance(unwrap(model), FSDPModule)


def _decoder_blocks(model: nn.Module, block_classes: Sequence[str] | None) -> list[nn.Module]:
    names = set(block_classes or getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise ValueError(
            f"Found no decoder blocks to shard in the teacher ({type(model).__name__}): looked for modules of "
            f"the classes {sorted(names) or 'in model._no_split_modules (none declared)'}. FSDP2 gathers one "
            "block at a time, so the teacher must be cut into blocks: pass block_classes=['MyDecoderLayer'] "
            "with the class name of the repeated layer."
        )
    return blocks


def shard_teacher(
    teacher: nn.Module,
    mesh: DeviceMesh | None = None,
    *,
    block_classes: Sequence[str] | None = None,
) -> nn.Module:
    """Freeze ``teacher`` and shard it over the processes of ``mesh`` with FSDP2, one unit per decoder block.

    Each decoder block (the classes in ``block_classes``, default the model's ``_no_split_modules``), an untied
    input embedding and LM head, and then the whole model go through `torch.distributed.fsdp.fully_shard` with
    ``reshard_after_forward=True``: between forwards every rank holds 1/N of each weight (embeddings and LM head
    included, tied or not), and a forward gathers one unit at a time. The teacher gets no gradients and no optimizer state and is never saved.

    ``mesh`` defaults to a 1-D mesh over all processes on the teacher's device type (the Trainer passes
    accelerate's FSDP mesh). Call it in every process with the same, fully loaded teacher (a copy in each
    process's host memory: for the largest teachers load on CPU and let sharding move 1/N to each GPU).
    """
    _require_process_group("shard_teacher")
    if is_deepspeed_engine(teacher):
        raise ValueError(
            "The teacher is already a DeepSpeed engine, but shard_teacher shards with FSDP2. Mixing engines "
            "is not supported: under FSDP2 pass the plain teacher model; under DeepSpeed ZeRO-3 let the "
            "DistillationTrainer prepare it."
        )
    check_weights_present(teacher)
    freeze(teacher)
    if isinstance(teacher, FSDPModule):
        return teacher
    if mesh is None:
        device = next(teacher.parameters()).device
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in _decoder_blocks(teacher, block_classes):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # Untied embedding and head get units of their own: the embedding is gathered only for its lookup, and the
    # head never is when the fused objective bypasses it. Tied ones stay in the root unit, which holds them
    # gathered for the whole forward (a shared parameter must sit in one unit).
    embed = getattr(teacher, "get_input_embeddings", lambda: None)()
    head = getattr(teacher, "get_output_embeddings", lambda: None)()
    if embed is not None and head is not None and embed.weight is not head.weight:
        fully_shard(embed, mesh=mesh, reshard_after_forward=True)
        fully_shard(head, mesh=mesh, reshard_after_forward=True)
    fully_shard(teacher, mesh=mesh, reshard_after_forward=True)
    return teacher


def _vocab_rows(tensor: torch.Tensor | None, total: int, columns: int) -> torch.Tensor | None:
    """This rank's rows of a ``[V, ...]`` head tensor when ``total`` rows are split as FSDP2 splits dim 0 (the
    teacher head's layout), cut at ``columns``.

    A DTensor sharded on dim 0 gives its local rows; a whole tensor (the student's head, which FSDP2 keeps
    gathered from its forward to its backward; a replicated model) gives the same rows by slicing.
    """
    if tensor is None:
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = math.ceil(total / world)
    start, stop = min(rank * per_rank, total), min((rank + 1) * per_rank, total)
    if isinstance(tensor, DTensor):
        rows = tensor.to_local()
        if (
            tuple(tensor.placements) != (Shard(0),)
            or tensor.device_mesh.size() != world
            or tensor.shape[0] != total
            or rows.shape[0] != stop - start
        ):
            raise ValueError(
                f"A head weight is a DTensor of shape {tuple(tensor.shape)} placed {tensor.placements} on "
                f"{tensor.device_mesh.size()} ranks, holding {rows.shape[0]} rows here; the vocabulary-parallel "
                f"objective needs the {total} rows split over all {world} ranks as fully_shard splits them on a "
                "1-D mesh (Shard(0)). Shard the teacher with shard_teacher()."
            )
    else:
        rows = tensor[start:stop]
    return rows[: max(min(stop, columns) - start, 0)]


def vocab_parallel_objective(
    student_hidden: torch.Tensor,
    student_head: nn.Linear,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Linear,
    labels: torch.Tensor | None,
    *,
    columns: int | None = None,
    **settings: Any,
) -> DistillationOutput:
    """`vocab_parallel_distillation_loss` for a student and a `shard_teacher` teacher, from their heads as modules.

    Call it after both forwards ran with their heads bypassed (`head_bypassed`): the teacher's head weight is
    then FSDP2's row shard of this rank and the student's head whole (accelerate keeps the student's final norm
    and head gathered from forward to backward) or a shard too. Both are cut to this rank's vocabulary rows
    and to the first ``columns`` ids (default: the smaller head's rows; padding rows of a bigger embedding are
    not compared). ``settings`` are the loss options.
    """
    if isinstance(student_head.weight, DTensor):
        raise ValueError(
            "The student's LM head is resharded after its forward (its weight is a DTensor shard), so its "
            "gradient would skip FSDP2's reduction. Keep the unit holding the student's lm_head gathered "
            "after forward: fully_shard([final_norm, lm_head], reshard_after_forward=False), as accelerate does."
        )
    total = teacher_head.weight.shape[0]
    columns = min(total, student_head.weight.shape[0]) if columns is None else columns
    parts = [
        _vocab_rows(tensor, total, columns)
        for tensor in (student_head.weight, student_head.bias, teacher_head.weight, teacher_head.bias)
    ]
    group = teacher_head.weight.device_mesh.get_group() if isinstance(teacher_head.weight, DTensor) else None
    return vocab_parallel_distillation_loss(
        student_hidden,
        parts[0],
        teacher_hidden,
        parts[2],
        labels,
        student_head_bias=parts[1],
        teacher_head_bias=parts[3],
        group=group,
        **settings,
    )


class ShardedPlacement(TeacherPlacement):
    """The teacher sharded with FSDP2 over all processes (`shard_teacher`), and the vocabulary-parallel objective.

    Each rank holds a slice of the teacher's head rows, so the fused objective covers every rank's tokens on
    each rank's columns (`vocab_parallel_objective`): a collective call, taken by all ranks or by none.

    Args:
        device_type: the device type of the process mesh to shard over (the accelerator's); a teacher already
            sharded (`shard_teacher` called by the user) is kept as it is.
    """

    collective = True
    head_objective = staticmethod(vocab_parallel_objective)

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type

    def place(self, teacher: nn.Module) -> nn.Module:
        if is_sharded(teacher):
            return teacher
        _require_process_group("shard_teacher")
        return shard_teacher(teacher, init_device_mesh(self.device_type, (dist.get_world_size(),)))

    def agree(self, supported: bool, accelerator: Any) -> bool:
        """Fused only when every rank can: the objective is collective."""
        agreed = torch.tensor(float(supported), device=accelerator.device)
        return bool(accelerator.reduce(agreed, reduction="mean") == 1.0)
