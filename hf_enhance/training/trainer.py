"""`EnhancedTrainer`: a `Trainer` that applies `EnhancedTrainingArguments` (early stopping, clipping modes)."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import IntervalStrategy

from hf_enhance.files import write_json_atomically
from hf_enhance.training.arguments import EnhancedTrainingArguments
from hf_enhance.training.checkpoints import checkpoint_problem, newest_complete_checkpoint
from hf_enhance.training.clipping import AdaptiveGradClip
from hf_enhance.training.early_stopping import EarlyStopping
from hf_enhance.training.internals import TrainerInternals, forget_evaluation_prepare

logger = logging.getLogger(__name__)

GRAD_CLIP_STATE_NAME = "grad_clip_state.json"


class EnhancedTrainer(TrainerInternals):
    """A `transformers.Trainer` that applies `EnhancedTrainingArguments`.

    Takes every `Trainer` argument, unchanged. With `EnhancedTrainingArguments` (the default when `args` is
    omitted) it:

    - adds an `EarlyStopping` callback built from the `early_stopping_*`, `stop_on_nonfinite` and
      `divergence_threshold` arguments, unless `callbacks` already holds an `EarlyStopping` (yours wins) or every
      check is off (`early_stopping_patience=None`, `stop_on_nonfinite=False`, `divergence_threshold=None`);
    - without an `eval_dataset`, switches evaluation, early stopping on the eval metric and best-model loading
      off with one warning, where `Trainer` raises (the arguments you passed are not modified);
    - clips with `grad_clip_mode` ("norm", "value", "autoclip", "zclip"); `max_grad_norm=0` turns clipping off.
      The logged `grad_norm` is the norm before clipping; `grad_clip_threshold` (the threshold at the logged
      step) and `grad_clip_fraction` (the share of optimizer steps clipped since the previous log) are logged
      next to it. AutoClip/ZClip statistics are saved in each checkpoint (`grad_clip_state.json`) and restored
      on resume;
    - with `stop_on_nonfinite`, checks the gradient norm after every optimizer step and logs at once when it is
      NaN/inf, so `EarlyStopping` stops at that step instead of at the next logging step (skipped under fp16,
      where the GradScaler skips overflowing steps by design).
    - with `skip_nonfinite_steps` (default), never applies a NaN/inf gradient: the step's gradients are dropped
      before `optimizer.step()`, which then leaves every parameter and its optimizer state untouched. Skipped
      steps are counted (`skipped_steps`, logged with the loss). Every process sees the same all-reduced norm,
      so all skip together; under fp16 the GradScaler does this itself;
    - refuses to save (`save_model`, checkpoints) weights that hold NaN/inf, with an error naming the parameter,
      so a diverged run never overwrites good files.

    With a plain `TrainingArguments` it behaves exactly like `Trainer`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        params = inspect.signature(Trainer.__init__).bind(self, *args, **kwargs).arguments
        params.pop("self")
        training_args = params.get("args")
        if training_args is None:
            training_args = EnhancedTrainingArguments(
                output_dir="tmp_trainer"
            )  # Trainer's own default folder
        if isinstance(training_args, EnhancedTrainingArguments):
            if training_args.eval_strategy != IntervalStrategy.NO and params.get("eval_dataset") is None:
                training_args = training_args.without_evaluation("no eval_dataset was passed to the trainer")
            callbacks = list(params.get("callbacks") or [])
            early_stopping = training_args.early_stopping_callback()
            if early_stopping is not None and not any(isinstance(cb, EarlyStopping) for cb in callbacks):
                callbacks.append(early_stopping)
            params["callbacks"] = callbacks
        params["args"] = training_args
        train_dataset = params.get("train_dataset")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError(
                "train_dataset is empty: there is nothing to train on. Check the filtering, split or file that "
                "built it (e.g. every text shorter than one block is dropped when grouping into blocks)."
            )
        super().__init__(**params)
        if self._enhanced and self.args.grad_clip_mode != "norm" and self.is_deepspeed_enabled:
            raise ValueError(
                f"grad_clip_mode={self.args.grad_clip_mode!r} is not available with DeepSpeed, which clips "
                "gradients inside its engine (by norm, from max_grad_norm). Use grad_clip_mode='norm'."
            )
        self._grad_clipper: AdaptiveGradClip | None = None
        self._skipped_steps = 0
        self._reset_clip_stats()

    @property
    def _enhanced(self) -> bool:
        return isinstance(self.args, EnhancedTrainingArguments)

    @property
    def stop_reason(self) -> str | None:
        """Why the last `train()` stopped early (from its `EarlyStopping`), or None if it ran to the end."""
        return next(
            (
                cb.stop_reason
                for cb in self.callback_handler.callbacks
                if isinstance(cb, EarlyStopping) and cb.stop_reason
            ),
            None,
        )

    def _after_grad_norm(self, norm: Any) -> None:
        """A NaN/inf norm: drop the step's gradients (skip_nonfinite_steps) and log this step (stop_on_nonfinite).

        Logging at once lets `EarlyStopping` see the norm at this step rather than at the next logging step.
        Under fp16 the GradScaler skips overflowing steps by design, so neither applies.
        """
        super()._after_grad_norm(norm)
        if (
            not self._enhanced
            or norm is None
            or self.accelerator.scaler is not None
            or math.isfinite(float(norm))
        ):
            return
        if self.args.skip_nonfinite_steps and not self.is_deepspeed_enabled:
            self._skip_optimizer_step(float(norm))
        if self.args.stop_on_nonfinite:
            self.control.should_log = True

    def _skip_optimizer_step(self, norm: float) -> None:
        """Drop this step's gradients: torch optimizers leave a parameter without a gradient, and its state, as is."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self._skipped_steps += 1
        logger.warning(
            "Step %d: the gradient norm is %s; the optimizer step is skipped (weights and optimizer state "
            "unchanged, %d step(s) skipped so far).",
            self.state.global_step + 1,
            norm,
            self._skipped_steps,
        )

    def _check_savable(self, output_dir: str | None, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Refuse (with `EnhancedTrainingArguments`) to write weights that hold NaN/inf."""
        super()._check_savable(output_dir, state_dict)
        if self._enhanced:
            tensors = state_dict.items() if state_dict is not None else self.model.named_parameters()
            for name, tensor in tensors:
                if (
                    tensor.is_floating_point()
                    and tensor.device.type != "meta"
                    and not tensor.isfinite().all()
                ):
                    bad = int((~tensor.isfinite()).sum())
                    raise ValueError(
                        f"Refusing to save to {output_dir or self.args.output_dir}: parameter {name!r} holds "
                        f"{bad} NaN/inf value(s) of {tensor.numel()}. Saving would replace usable files with "
                        "a broken model. Earlier checkpoints are kept; lower the learning rate, clip gradients "
                        "(max_grad_norm), keep skip_nonfinite_steps=True, or check the inputs for NaN/inf."
                    )

    def _reset_clip_stats(self) -> None:
        self._clip_steps = 0
        self._clip_hits = 0
        self._clip_threshold: float | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, with fresh adaptive-clipping statistics (restored from the checkpoint on resume).

        ``resume_from_checkpoint=True`` resumes from the newest *complete* checkpoint: one that a kill left
        half-written is skipped with a log line. A path to an incomplete checkpoint is an error that says why.
        """
        if self._enhanced and resume_from_checkpoint is True:
            resume_from_checkpoint = newest_complete_checkpoint(self.args.output_dir)
        elif self._enhanced and isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(
                    f"Cannot resume from {resume_from_checkpoint}: {problem}. Pass another checkpoint, or "
                    "resume_from_checkpoint=True for the newest complete one."
                )
        self._grad_clipper = self.args.grad_clipper() if self._enhanced else None
        self._skipped_steps = 0
        self._reset_clip_stats()
        forget_evaluation_prepare(self)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- clipping: transformers clips once per optimizer step when max_grad_norm > 0 ----
    def _clip_gradients(self, model: nn.Module) -> Any:
        """Clip by `grad_clip_mode`; count the steps whose gradients exceeded the threshold."""
        if not self._enhanced:
            return super()._clip_gradients(model)
        mode = self.args.grad_clip_mode
        if mode == "norm":
            norm = super()._clip_gradients(model)
            threshold = self.args.max_grad_norm
            exceeded = norm
        else:
            params = list(model.parameters())
            # Unscales fp16 gradients and reduces the norm over shards; an infinite threshold clips nothing.
            norm = self.accelerator.clip_grad_norm_(params, float("inf"))
            if mode == "value":
                threshold = self.args.max_grad_norm
                grads = [p.grad for p in params if p.grad is not None]
                exceeded = torch.nn.utils.get_total_norm(grads, norm_type=math.inf) if grads else 0.0
                torch.nn.utils.clip_grad_value_(params, threshold)
            else:
                if self._grad_clipper is None:  # called outside train()
                    self._grad_clipper = self.args.grad_clipper()
                threshold = self._grad_clipper.clip_(params, total_norm=norm)
                exceeded = norm
        if norm is not None:
            self._clip_steps += 1
            self._clip_hits += int(float(exceeded) > threshold)
            self._clip_threshold = threshold
        return norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._skipped_steps and "loss" in logs:
            logs["skipped_steps"] = self._skipped_steps
        if self._clip_steps and "loss" in logs and "grad_norm" in logs:
            logs["grad_clip_fraction"] = self._clip_hits / self._clip_steps
            if self._clip_threshold is not None and math.isfinite(self._clip_threshold):
                logs["grad_clip_threshold"] = self._clip_threshold
            self._reset_clip_stats()
        super().log(logs, start_time)

    # ---- adaptive-clipping statistics travel with the optimizer state ----
    def _save_extra_state(self, output_dir: str) -> None:
        super()._save_extra_state(output_dir)
        if self._grad_clipper is not None and self.args.should_save:
            write_json_atomically(
                os.path.join(output_dir, GRAD_CLIP_STATE_NAME), self._grad_clipper.state_dict()
            )

    def _load_extra_state(self, checkpoint: str) -> None:
        super()._load_extra_state(checkpoint)
        if self._grad_clipper is None:
            return
        path = os.path.join(checkpoint, GRAD_CLIP_STATE_NAME)
        if not os.path.isfile(path):
            logger.warning(
                "%s has no %s: the %s statistics start afresh.",
                checkpoint,
                GRAD_CLIP_STATE_NAME,
                self.args.grad_clip_mode,
            )
            return
        with open(path) as f:
            self._grad_clipper.load_state_dict(json.load(f))
