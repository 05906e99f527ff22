"""`HiddenStateTerm`: the hidden-state (intermediate-layer) term of `DistillationTrainer`, a component it owns.

With ``hidden_weight > 0`` the trainer's loss gains hidden_weight · hidden_loss, the distance between chosen
student block outputs and teacher block outputs. The term

- resolves and checks the layer map and keeps the mapped blocks, whose outputs forward hooks capture during
  the forwards that already run (`capture`);
- masks the tokens the term counts: the KD term's positions, padding excluded (`mask`);
- counts those tokens over the whole accumulated (and all-device) batch when Trainer counts the KD term's
  (`count_tokens`), so each micro-batch's term is weighed by its share of them (`share`), as the KD term is;
- when the widths differ, owns ``projections`` trained next to the student: their own optimizer param group,
  gradient clearing at each step, gradient averaging and rank-0 initial weights under DDP, and saving and
  restoring with Trainer checkpoints (`hidden_projections.safetensors`), never in the saved student.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from hf_enhance.distillation.terms.blocks import (
    block_stack,
    build_projections,
    captured_block_outputs,
    default_layer_map,
)
from hf_enhance.files import save_file_atomically
from hf_enhance.objectives.hidden_states import check_layer_map, hidden_state_loss, hidden_token_count
from hf_enhance.students.record import RECORD_KEY

logger = logging.getLogger(__name__)

__all__ = ["HIDDEN_PROJECTIONS_NAME", "HiddenStateTerm"]

HIDDEN_PROJECTIONS_NAME = "hidden_projections.safetensors"


class _ClearProjectionGradients(TrainerCallback):
    """Clear the hidden-state projections' gradients where each optimizer step's micro-batches begin.

    Trainer zeroes only the model's gradients; the projections live outside it.
    """

    def __init__(self, projections: nn.ModuleList) -> None:
        self.projections = projections

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.projections.zero_grad(set_to_none=True)


class HiddenStateTerm:
    """The mapped blocks, the token mask and the projections of the hidden-state term.

    Args:
        student, teacher: the models (the teacher placed); their one stack of repeated blocks is compared.
        task: the distillation task, which decides the token positions that count.
        layer_map: teacher block index per student block; None: the layers the student was built from, else
            uniform.
        distance: ``"cosine"`` or ``"mse"`` (`hidden_state_loss`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        task: str | None,
        layer_map: list[int] | None,
        distance: str,
    ) -> None:
        if task is None:
            raise ValueError(
                f"hidden_weight > 0 needs to know which token positions count, but the task of the student "
                f"({type(student).__name__}) cannot be told from its class. Set DistillationTrainingArguments("
                "distillation_task='causal_lm', 'classification' or 'token_classification')."
            )
        student_blocks, teacher_blocks = block_stack(student, "student"), block_stack(teacher, "teacher")
        source = "hidden_layer_map"
        if layer_map is None:
            layer_map = default_layer_map(student, teacher)
            source = f"The default layer map (the student's config.{RECORD_KEY}['layers'])"
        check_layer_map(layer_map, len(student_blocks), len(teacher_blocks), source)
        self.task = task
        self.distance = distance
        self.layer_map = list(layer_map)
        self.student_blocks = list(student_blocks)
        self.teacher_blocks = [teacher_blocks[layer] for layer in layer_map]
        self.projections = build_projections(student, teacher, len(layer_map))

    def join(self, trainer: Any) -> None:
        """Ready the projections (when any) to train next to the trainer's student; refused where they cannot."""
        if self.projections is None:
            return
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            raise ValueError(
                "The student and teacher hidden sizes differ, so hidden-state distillation trains projections "
                "next to the student; DeepSpeed and FSDP build and shard the optimizer over the model alone and "
                "would leave them out. Train with DDP or on one device, use a student of the teacher's hidden "
                "size, or set hidden_weight=0."
            )
        if trainer.lr_scheduler is not None:
            raise ValueError(
                "optimizers=(optimizer, lr_scheduler) was given, but the hidden-state projections must join the "
                "optimizer before its scheduler is built. Pass optimizers=(optimizer, None), or "
                "optimizer_cls_and_kwargs=(cls, kwargs), and let the trainer build the scheduler."
            )
        self.projections = self.projections.to(trainer.accelerator.device)
        trainer.add_callback(_ClearProjectionGradients(self.projections))

    @contextmanager
    def capture(self) -> Iterator[tuple[list[Any], list[Any]]]:
        """Within the block, forwards record the mapped student and teacher block outputs."""
        with ExitStack() as stack:
            student = stack.enter_context(captured_block_outputs(self.student_blocks))
            teacher = stack.enter_context(captured_block_outputs(self.teacher_blocks))
            yield student, teacher

    def loss(
        self,
        captured: tuple[list[torch.Tensor | None], list[torch.Tensor | None]],
        inputs: dict[str, Any],
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden-state loss of this micro-batch (a mean) and the number of tokens it averages over."""
        student_states, teacher_states = captured
        for role, states in (("student", student_states), ("teacher", teacher_states)):
            if any(state is None for state in states):
                raise RuntimeError(
                    f"Some mapped {role} blocks did not run during this step's forward, so their outputs cannot "
                    "be compared. Hidden-state distillation needs both models to run every mapped block on the "
                    "batch (a batch joined with a teacher cache runs no teacher); otherwise set hidden_weight=0."
                )
        mask = self.mask(inputs, labels)
        loss = hidden_state_loss(student_states, teacher_states, mask, self.distance, self.projections)  # type: ignore[arg-type]
        return loss, hidden_token_count(student_states[0], mask)  # type: ignore[arg-type]

    def mask(self, inputs: dict[str, Any], labels: torch.Tensor | None) -> torch.Tensor:
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
        if self.task == "causal_lm":
            targets = torch.ones_like(keep[:, 1:]) if labels is None else labels[:, 1:] != -100
            keep = keep & F.pad(targets.to(keep.device), (0, 1), value=False)
        elif self.task == "token_classification" and labels is not None:
            keep = keep & (labels != -100).to(keep.device)
        return keep

    def count_tokens(self, batches: list[Any], device: torch.device, gather: Any | None) -> torch.Tensor:
        """The term's tokens over one optimizer step's micro-batches (``gather``: over all processes too)."""
        count = sum(self.mask(batch, batch.get("labels")).sum().to(device) for batch in batches)
        return count if gather is None else gather(count).sum()

    @staticmethod
    def share(
        hidden: torch.Tensor,
        num_tokens: torch.Tensor,
        step_tokens: torch.Tensor | None,
        kd_tokens: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """This micro-batch's share of the hidden term's mean over the whole step, as for the KD term.

        ``step_tokens``: the term's token count over the step (`count_tokens`, carried by the batch); without it
        (compute_loss called outside Trainer's step) the share is weighed like the KD term's.
        """
        if num_items_in_batch is None:
            return hidden
        if step_tokens is not None:
            return hidden * num_tokens / step_tokens.clamp(min=1)
        return hidden * kd_tokens / num_items_in_batch

    # ---- the projections: trained, averaged and checkpointed with the student ----
    def add_to_optimizer(
        self, optimizer: torch.optim.Optimizer, accelerator: Any, weight_decay: float
    ) -> None:
        """The projections as a param group of their own; on first joining every process takes rank 0's, as DDP
        does for the model's weights."""
        if self.projections is None:
            return
        params = list(self.projections.parameters())
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if id(params[0]) in optimised:  # train() may run more than once
            return
        if accelerator.num_processes > 1:
            with torch.no_grad():
                for param in params:
                    param.copy_(broadcast(param.detach().clone(), from_process=0))
        optimizer.add_param_group({"params": params, "weight_decay": weight_decay})

    def average_gradients(self, accelerator: Any) -> None:
        """At an optimizer step, average the projections' gradients over processes (DDP averages the model's)."""
        if self.projections is None or not accelerator.sync_gradients or accelerator.num_processes == 1:
            return
        params = list(self.projections.parameters())
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        mean = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        for param, grad in zip(params, mean.split([p.numel() for p in params]), strict=True):
            param.grad = grad.view_as(param)

    def with_model(self, model: nn.Module) -> nn.Module:
        """The model and the projections as one module, so clipping and the logged grad_norm cover both."""
        return model if self.projections is None else nn.ModuleList([model, self.projections])

    def save(self, output_dir: str) -> None:
        """Write the projections into a checkpoint folder (never into the saved student)."""
        if self.projections is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file_atomically(state, os.path.join(output_dir, HIDDEN_PROJECTIONS_NAME))

    def load(self, checkpoint: str) -> None:
        """Restore the projections saved with the checkpoint (a warning when absent)."""
        if self.projections is None:
            return
        path = os.path.join(checkpoint, HIDDEN_PROJECTIONS_NAME)
        if not os.path.isfile(path):
            logger.warning(
                "%s has no %s: the hidden-state projections start from their initialisation.",
                checkpoint,
                HIDDEN_PROJECTIONS_NAME,
            )
            return
        self.projections.load_state_dict(load_file(path))
