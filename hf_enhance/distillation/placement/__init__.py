"""Where the teacher lives: one `TeacherPlacement` per trainer, chosen once from the run's engine.

| placement | when | fused objective |
|---|---|---|
| `LocalPlacement` | one process, DDP, or a teacher loaded with ``device_map`` | `fused_distillation_loss` |
| `ShardedPlacement` | accelerate's FSDP2, or a teacher the user sharded (`shard_teacher`) | vocabulary-parallel, collective |
| `Zero3Placement` | DeepSpeed ZeRO-3 | on both heads, gathered for the call |
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hf_enhance.distillation.placement.base import TeacherPlacement
from hf_enhance.distillation.placement.fsdp2 import ShardedPlacement, is_sharded
from hf_enhance.distillation.placement.local import LocalPlacement
from hf_enhance.distillation.placement.zero3 import Zero3Placement
from hf_enhance.modeling import is_deepspeed_engine

__all__ = ["LocalPlacement", "ShardedPlacement", "TeacherPlacement", "Zero3Placement", "choose_placement"]


def choose_placement(
    teacher: nn.Module | None, accelerator: Any, *, fsdp: bool, deepspeed: bool
) -> TeacherPlacement:
    """The placement for ``teacher`` in a run whose student is prepared by ``accelerator``.

    ``fsdp`` / ``deepspeed``: the trainer's ``is_fsdp_enabled`` / ``is_deepspeed_enabled``. A teacher already
    under another engine than the run's (a DeepSpeed engine outside ZeRO-3, an FSDP2-sharded teacher under
    ZeRO-3) is refused: mixing engines is not supported.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    zero3 = deepspeed and getattr(plugin, "zero_stage", None) == 3
    mixed = None
    if teacher is not None and is_deepspeed_engine(teacher) and not zero3:
        mixed = "The teacher is a DeepSpeed engine but the run does not use DeepSpeed ZeRO-3"
    elif teacher is not None and zero3 and is_sharded(teacher):
        mixed = "The teacher was sharded with FSDP2 (shard_teacher) but the run uses DeepSpeed ZeRO-3"
    if mixed is not None:
        raise ValueError(
            f"{mixed}. Mixing engines is not supported: pass the plain teacher model, and DistillationTrainer "
            "places it the student's way (ZeRO-3: a partitioned inference engine; FSDP2: shard_teacher; "
            "otherwise whole on each device)."
        )
    if zero3:
        return Zero3Placement(plugin.deepspeed_config)
    if teacher is not None and is_sharded(teacher):
        return ShardedPlacement(accelerator.device.type)
    if teacher is not None and getattr(teacher, "hf_device_map", None) is not None:
        return LocalPlacement(None, fsdp1=fsdp)
    if fsdp and accelerator.is_fsdp2:
        return ShardedPlacement(accelerator.device.type)
    return LocalPlacement(accelerator.device, fsdp1=fsdp)
