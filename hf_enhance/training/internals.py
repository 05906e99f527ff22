"""Every private `transformers.Trainer` / `accelerate.Accelerator` name hf_enhance relies on, in one place.

`Trainer` offers no public hook for some of what the trainers do: clipping with other rules, seeing each step's
gradient norm, saving extra state inside a checkpoint, refusing to save NaN weights, keeping extra dataset
columns, counting a step's tokens over extra terms. `TrainerInternals` overrides those private methods and
routes each to a hook of its own (`_clip_gradients`, `_gradient_module`, `_after_grad_norm`, `_save_extra_state`,
`_load_extra_state`, `_check_savable`, `_extra_signature_columns`, `_count_batch_items`) that `EnhancedTrainer`
and `DistillationTrainer` override. Nothing else in hf_enhance names a private Trainer method.

`TRAINER_PRIVATE_METHODS` lists each relied-on method with the parameters it is called with and
`signature_problem()` checks one against the installed transformers (tests/training/test_internals.py runs it for
each, on the oldest and the newest supported transformers in CI), so a release that moves one fails in CI with a
message that names the method and the version.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn
from transformers import Trainer

# Trainer methods hf_enhance overrides or calls, with the parameters (after self) it passes, in order.
# `get_batch_samples` is public but undocumented; it is listed because DistillationTrainer overrides it (on-policy sampling).
TRAINER_PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_clip_grad_norm": ("model",),
    "_get_grad_norm": ("model", "grad_norm"),
    "_save": ("output_dir", "state_dict"),
    "_save_optimizer_and_scheduler": ("output_dir",),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_set_signature_columns_if_needed": (),
    "_get_num_items_in_batch": ("batch_samples", "device"),
    "_issue_warnings_after_load": ("load_result",),
    "get_batch_samples": ("epoch_iterator", "num_batches", "device"),
}
# Attributes: Trainer's kept-columns list, its flag for counting causal-LM label tokens after the shift
# (`count_shifted_labels`), the Accelerator's registry of prepared models, and the mark
# `Accelerator.prepare_model` leaves on a model (`forget_evaluation_prepare` undoes both).
TRAINER_PRIVATE_ATTRIBUTES = ("_signature_columns", "_loss_shifts_labels")
ACCELERATOR_PRIVATE_ATTRIBUTES = ("_models",)
PREPARED_MARK = "_is_accelerate_prepared"


def signature_problem(name: str, trainer_class: type = Trainer) -> str | None:
    """Why `trainer_class` no longer fits hf_enhance's use of its method `name`, or None when it does.

    `name` is a key of `TRAINER_PRIVATE_METHODS`; the method must exist and take those parameters first, in order.
    """
    params = TRAINER_PRIVATE_METHODS[name]
    method = getattr(trainer_class, name, None)
    fix = "Pin a transformers release that passes tests/training/test_internals.py, or port TrainerInternals."
    if method is None:
        return (
            f"transformers {transformers.__version__}: Trainer.{name} is gone; hf_enhance/training/internals.py "
            f"overrides or calls it. {fix}"
        )
    found = tuple(inspect.signature(method).parameters)[1:]
    if found[: len(params)] != params:
        return (
            f"transformers {transformers.__version__}: Trainer.{name} takes {found}, not {params} as "
            f"hf_enhance/training/internals.py calls it. {fix}"
        )
    return None


def forget_evaluation_prepare(trainer: Trainer) -> None:
    """Undo the mark that an `evaluate()` before `train()` leaves on the bare model.

    transformers 5.x prepares the model for evaluation without wrapping it, marks it as prepared and registers it
    with the Accelerator; `train()` then skips the DDP/FSDP wrap, so the processes silently train different
    models. Dropping the mark and the registration lets `train()` wrap it as usual.
    """
    model = trainer.model
    if getattr(model, PREPARED_MARK, False) and model is trainer.model_wrapped:
        delattr(model, PREPARED_MARK)
        if model in trainer.accelerator._models:
            trainer.accelerator._models.remove(model)


def untied_missing_keys(model: nn.Module, missing_keys: list[str]) -> list[str]:
    """``missing_keys`` less the names of parameters tied to (the same tensor as) a parameter that was loaded."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(param), []).append(name)
    missing = set(missing_keys)
    filled = {name for names in names_by_tensor.values() if not set(names) <= missing for name in names}
    return [key for key in missing_keys if key not in filled]


class TrainerInternals(Trainer):
    """`Trainer` with its private methods routed to hf_enhance hooks; each hook's default keeps Trainer's behaviour.

    Subclasses override the hooks (calling ``super()`` to chain), never the private methods themselves.
    """

    # ---- hooks ----
    def _gradient_module(self, model: nn.Module) -> nn.Module:
        """The module whose gradients are clipped and whose norm is logged (default: the model)."""
        return model

    def _clip_gradients(self, model: nn.Module) -> Any:
        """Clip the gradients of `model` and return their norm before clipping (default: Trainer's, by norm)."""
        return super()._clip_grad_norm(model)

    def _after_grad_norm(self, norm: Any) -> None:
        """Called once per optimizer step, before `optimizer.step()`, with the step's gradient norm (or None)."""

    def _check_savable(self, output_dir: str | None, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Called before the model's weights are written (`save_model` and checkpoints); raise to refuse."""

    def _save_extra_state(self, output_dir: str) -> None:
        """Write extra state into a checkpoint folder, next to the optimizer and scheduler."""

    def _load_extra_state(self, checkpoint: str) -> None:
        """Restore what `_save_extra_state` wrote, when training resumes from `checkpoint`."""

    def _extra_signature_columns(self) -> list[str]:
        """Dataset columns kept, on top of the model's forward arguments, when unused columns are dropped."""
        return []

    def _count_batch_items(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """The token count that normalises one optimizer step's loss (default: Trainer's label-token count)."""
        return super()._get_num_items_in_batch(batch_samples, device)

    def count_shifted_labels(self, shifted: bool) -> None:
        """Whether Trainer's label-token count skips each row's first label (a loss that shifts labels itself).

        Trainer decides it from the model's loss type; a trainer computing its own causal-LM loss says it here.
        """
        self._loss_shifts_labels = shifted

    # ---- the private Trainer methods, each routed to its hook ----
    def _clip_grad_norm(self, model: nn.Module) -> Any:
        return self._clip_gradients(self._gradient_module(model))

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(self._gradient_module(model), grad_norm=grad_norm)
        self._after_grad_norm(norm)
        return norm

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        self._check_savable(output_dir, state_dict)
        super()._save(output_dir, state_dict)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._save_extra_state(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_extra_state(checkpoint)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [c for c in self._extra_signature_columns() if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        return self._count_batch_items(batch_samples, device)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Trainer's missing/unexpected-key warnings after loading the best checkpoint, less tied parameters.

        A checkpoint stores a tied pair once (``lm_head.weight`` shares ``transformer.wte.weight``); loading the
        stored one fills both, as they are one tensor in the model. transformers 5.x still reports the other as
        missing, so only keys whose tensor nothing in the checkpoint filled are passed on to the warning.
        """
        super()._issue_warnings_after_load(
            type(load_result)(
                untied_missing_keys(self.model, load_result.missing_keys), load_result.unexpected_keys
            )
        )
