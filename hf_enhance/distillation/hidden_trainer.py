"""`HiddenStateDistillation`: the hidden-state (intermediate-layer) term of `DistillationTrainer`, as a mixin.

With ``hidden_weight > 0`` the trainer's loss gains hidden_weight · hidden_loss, the distance between chosen
student block outputs and teacher block outputs. The mixin

- resolves and checks the layer map and keeps the mapped blocks, whose outputs forward hooks capture during
  the forwards that already run (`_block_outputs`);
- masks the tokens the term counts: the KD term's positions, padding excluded (`_hidden_mask`);
- normalises the term by token count over the whole accumulated (and all-device) batch, as the KD term is
  (`_count_batch_items`, `_hidden_share`);
- when the widths differ, trains `hidden_projections` next to the student: their own optimizer param group,
  gradient clearing at each step, clipping and the logged grad_norm over model and projections together,
  gradient averaging and rank-0 initial weights under DDP, and saving and restoring with Trainer checkpoints
  (`hidden_projections.safetensors`), never in the saved student.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from hf_enhance.distillation.intermediate import (
    block_stack,
    build_projections,
    captured_block_outputs,
    default_layer_map,
)
from hf_enhance.files import save_file_atomically
from hf_enhance.objectives.hidden_states import check_layer_map, hidden_state_loss, hidden_token_count
from hf_enhance.students.record import RECORD_KEY

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hf_enhance.distillation.arguments import DistillationTrainingArguments
    from hf_enhance.training.internals import TrainerInternals

    _TrainerBase = TrainerInternals
else:
    _TrainerBase = object

logger = logging.getLogger(__name__)

HIDDEN_PROJECTIONS_NAME = "hidden_projections.safetensors"


class _ClearProjectionGradients(TrainerCallback):
    """Clear the hidden-state projections' gradients where each optimizer step's micro-batches begin.

    Trainer zeroes only the model's gradients; the projections live outside it.
    """

    def __init__(self, projections: nn.ModuleList) -> None:
        self.projections = projections

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.projections.zero_grad(set_to_none=True)


class HiddenStateDistillation(_TrainerBase):
    """The hidden-state term and its projections, for a `transformers.Trainer` subclass that distils.

    Mix in before the Trainer class. The host sets `distillation_task` and `teacher_model` before calling
    `_set_up_hidden_distillation`, and calls `_block_outputs`, `_hidden_term` and `_hidden_share` from its
    `compute_loss`.
    """

    args: DistillationTrainingArguments
    accelerator: Accelerator
    teacher_model: nn.Module | None
    distillation_task: str | None
    hidden_layer_map: list[int] | None
    hidden_projections: nn.ModuleList | None
    _hidden_blocks: tuple[list[nn.Module], list[nn.Module]] | None
    _hidden_items: tuple[Any, torch.Tensor] | None

    def _set_up_hidden_distillation(self, model: nn.Module) -> None:
        """With hidden_weight > 0: check and keep the layer map and its blocks, build the projections."""
        self.hidden_layer_map = None
        self.hidden_projections = None
        self._hidden_blocks = None
        self._hidden_items = None
        if self.args.hidden_weight <= 0:
            return
        if self.distillation_task is None:
            raise ValueError(
                f"hidden_weight > 0 needs to know which token positions count, but the task of the student "
                f"({type(model).__name__}) cannot be told from its class. Set DistillationTrainingArguments("
                "distillation_task='causal_lm', 'classification' or 'token_classification')."
            )
        teacher = self.teacher_model
        student_blocks, teacher_blocks = block_stack(model, "student"), block_stack(teacher, "teacher")
        layer_map, source = self.args.hidden_layer_map, "hidden_layer_map"
        if layer_map is None:
            layer_map = default_layer_map(model, teacher)
            source = f"The default layer map (the student's config.{RECORD_KEY}['layers'])"
        check_layer_map(layer_map, len(student_blocks), len(teacher_blocks), source)
        self.hidden_layer_map = list(layer_map)
        self._hidden_blocks = (list(student_blocks), [teacher_blocks[layer] for layer in layer_map])
        projections = build_projections(model, teacher, len(layer_map))
        if projections is not None:
            self._check_projections_can_train()
            self.hidden_projections = projections.to(self.accelerator.device)
            self.add_callback(_ClearProjectionGradients(self.hidden_projections))

    def _check_projections_can_train(self) -> None:
        """The projections join the optimizer as a param group of their own, outside the wrapped model."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "The student and teacher hidden sizes differ, so hidden-state distillation trains projections "
                "next to the student; DeepSpeed and FSDP build and shard the optimizer over the model alone and "
                "would leave them out. Train with DDP or on one device, use a student of the teacher's hidden "
                "size, or set hidden_weight=0."
            )
        if self.lr_scheduler is not None:
            raise ValueError(
                "optimizers=(optimizer, lr_scheduler) was given, but the hidden-state projections must join the "
                "optimizer before its scheduler is built. Pass optimizers=(optimizer, None), or "
                "optimizer_cls_and_kwargs=(cls, kwargs), and let the trainer build the scheduler."
            )

    @contextmanager
    def _block_outputs(self) -> Iterator[tuple[list[Any], list[Any]] | None]:
        """Capture the mapped student and teacher block outputs within the block; None when hidden_weight = 0."""
        if self._hidden_blocks is None:
            yield None
            return
        student_blocks, teacher_blocks = self._hidden_blocks
        with (
            captured_block_outputs(student_blocks) as student,
            captured_block_outputs(teacher_blocks) as teacher,
        ):
            yield student, teacher

    def _hidden_term(
        self,
        student_states: list[torch.Tensor | None],
        teacher_states: list[torch.Tensor | None],
        inputs: dict[str, Any],
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden-state loss of this micro-batch (a mean) and the number of tokens it averages over."""
        for role, states in (("student", student_states), ("teacher", teacher_states)):
            if any(state is None for state in states):
                raise RuntimeError(
                    f"Some mapped {role} blocks did not run during this step's forward, so their outputs cannot "
                    "be compared. Hidden-state distillation needs both models to run every mapped block on the "
                    "batch (a batch joined with a teacher cache runs no teacher); otherwise set hidden_weight=0."
                )
        mask = self._hidden_mask(inputs, labels)
        loss = hidden_state_loss(
            student_states, teacher_states, mask, self.args.hidden_distance, self.hidden_projections
        )
        return loss, hidden_token_count(student_states[0], mask)

    def _hidden_mask(self, inputs: dict[str, Any], labels: torch.Tensor | None) -> torch.Tensor:
        """``[batch, length]`` True where the hidden term counts a token: the KD term's positions, minus padding.

        Causal LMs: position t counts when labels[:, t + 1] != -100 (every position but the last without labels);
        token classification: labels != -100; classification: every token. Padding (attention_mask 0) never counts.
        """
        attention = inputs.get("attention_mask")
        if attention is not None:
            keep = attention.bool()
        else:
            tokens = inputs.get("input_ids", inputs.get("inputs_embeds"))
            if tokens is None:
                raise ValueError(
                    f"The batch (keys: {', '.join(inputs)}) has no input_ids, inputs_embeds or attention_mask, so "
                    "the hidden-state term cannot tell its token positions. Add one of them to the batch."
                )
            keep = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if self.distillation_task == "causal_lm":
            targets = torch.ones_like(keep[:, 1:]) if labels is None else labels[:, 1:] != -100
            keep = keep & F.pad(targets.to(keep.device), (0, 1), value=False)
        elif self.distillation_task == "token_classification" and labels is not None:
            keep = keep & (labels != -100).to(keep.device)
        return keep

    def _count_batch_items(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """Trainer's label-token count; with the hidden term, also count its tokens over the same micro-batches.

        Both counts cover the whole accumulated (and, with average_tokens_across_devices, all-device) batch, so
        each micro-batch's term can be weighed by its share of the batch's tokens (`_hidden_share`).
        """
        num_items = super()._count_batch_items(batch_samples, device)
        if self._hidden_blocks is not None and num_items is not None:
            count = sum(
                self._hidden_mask(batch, batch.get("labels")).sum().to(device) for batch in batch_samples
            )
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._hidden_items = (num_items, count)
        return num_items

    def _hidden_share(
        self,
        hidden: torch.Tensor,
        num_tokens: torch.Tensor,
        kd_tokens: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """This micro-batch's share of the hidden term's mean over the whole batch, as for the KD term."""
        if num_items_in_batch is None:
            return hidden
        if self._hidden_items is not None and self._hidden_items[0] is num_items_in_batch:
            return hidden * num_tokens / self._hidden_items[1].clamp(min=1)
        # A count the trainer did not make (compute_loss called directly): weigh it like the KD term.
        return hidden * kd_tokens / num_items_in_batch

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Trainer's step; at each optimizer step, average the projections' gradients over the processes.

        DDP averages the model's gradients only: the projections live outside the wrapped model.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        if (
            self.hidden_projections is not None
            and self.accelerator.sync_gradients
            and self.accelerator.num_processes > 1
        ):
            params = list(self.hidden_projections.parameters())
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            mean = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
            for param, grad in zip(params, mean.split([p.numel() for p in params]), strict=True):
                param.grad = grad.view_as(param)
        return loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, plus the hidden-state projections (when any) as a param group of their own.

        On first joining, every process takes rank 0's projections, as DDP does for the model's weights.
        """
        optimizer = super().create_optimizer(model)
        if self.hidden_projections is None:
            return optimizer
        params = list(self.hidden_projections.parameters())
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if id(params[0]) not in optimised:  # train() may run more than once
            if self.accelerator.num_processes > 1:
                with torch.no_grad():
                    for param in params:
                        param.copy_(broadcast(param.detach().clone(), from_process=0))
            optimizer.add_param_group({"params": params, "weight_decay": self.args.weight_decay})
        return optimizer

    def _gradient_module(self, model: nn.Module) -> nn.Module:
        """The model and the projections as one module, so clipping and the logged grad_norm cover both."""
        model = super()._gradient_module(model)
        return model if self.hidden_projections is None else nn.ModuleList([model, self.hidden_projections])

    def _save_extra_state(self, output_dir: str) -> None:
        """Also save the hidden-state projections: checkpoint state, never part of the saved student."""
        super()._save_extra_state(output_dir)
        if self.hidden_projections is not None and self.args.should_save:
            state = {
                k: v.detach().cpu().contiguous() for k, v in self.hidden_projections.state_dict().items()
            }
            save_file_atomically(state, os.path.join(output_dir, HIDDEN_PROJECTIONS_NAME))

    def _load_extra_state(self, checkpoint: str) -> None:
        """Also restore the hidden-state projections saved with the checkpoint (a warning when absent)."""
        super()._load_extra_state(checkpoint)
        if self.hidden_projections is None:
            return
        path = os.path.join(checkpoint, HIDDEN_PROJECTIONS_NAME)
        if not os.path.isfile(path):
            logger.warning(
                "%s has no %s: the hidden-state projections start from their initialisation.",
                checkpoint,
                HIDDEN_PROJECTIONS_NAME,
            )
            return
        self.hidden_projections.load_state_dict(load_file(path))
