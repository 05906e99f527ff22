"""Early stopping as a `TrainerCallback`: patience with a real min_delta, baseline, divergence and NaN stops."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import IntervalStrategy

logger = logging.getLogger(__name__)

MODES = ("min", "max")
# Training-log keys checked for NaN/inf. `grad_norm` is skipped under fp16, where an infinite norm is a normal
# loss-scale overflow that the GradScaler handles by skipping the step.
_TRAIN_LOG_KEYS = ("loss", "grad_norm")


def metric_key(metric: str) -> str:
    """The key of `metric` in evaluation metrics, with transformers' convention: `"loss"` -> `"eval_loss"`."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


class EarlyStopping(TrainerCallback, ExportableState):
    """Stop training when an evaluation metric stops improving, diverges, or anything turns NaN/inf.

    Works in a plain `transformers.Trainer` (`callbacks=[EarlyStopping()]`); `EnhancedTrainer` adds one from its
    arguments.

    Args:
        patience: evaluations without improvement before stopping. `None` or `0` turns patience off (the NaN and
            divergence checks still run).
        min_delta: an evaluation improves only if it beats the best value by more than this. The best value
            moves only on such an improvement, so slow gains that add up past `min_delta` reset the count
            (transformers' `EarlyStoppingCallback` compares to a best that moves on every tiny gain, and stops).
        relative: `min_delta` is a fraction of the best value's magnitude (`0.01`: 1% better) instead of an
            absolute amount.
        metric: the metric to watch, with or without the `eval_` prefix. `None`: the trainer's
            `metric_for_best_model`, else `eval_loss`.
        mode: `"min"` or `"max"`. `None`: from the trainer's `greater_is_better` when `metric` is its
            `metric_for_best_model`, else `"min"` for a name ending in `loss` (any other name must say).
        baseline: the value to beat. Training stops if `patience` evaluations pass without beating it.
        check_finite: stop at once when the metric, the logged training loss or the gradient norm is NaN/inf.
        divergence_threshold: stop at once when the metric is worse than this (above it in `"min"` mode).

    After training, `stop_reason` says why training stopped (`None`: it ran to the end); the same sentence is
    logged as a warning. The counters are saved in every checkpoint (`TrainerState.stateful_callbacks`) and
    restored on `resume_from_checkpoint`, so a resumed run keeps counting. In a multi-process run the decision
    taken at each evaluation is all-reduced, so all processes stop at the same step; the training loss and the
    gradient norm are identical on all processes already (the Trainer reduces them).
    """

    def __init__(
        self,
        patience: int | None = 3,
        min_delta: float = 0.0,
        relative: bool = False,
        metric: str | None = None,
        mode: str | None = None,
        baseline: float | None = None,
        check_finite: bool = True,
        divergence_threshold: float | None = None,
    ) -> None:
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 0
        ):
            raise ValueError(
                f"patience must be None or an integer >= 0 (evaluations without improvement before stopping; "
                f"None or 0 turns it off), got {patience!r}."
            )
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(
                f"min_delta must be a finite number >= 0 (how much better than the best a value must be to count "
                f"as an improvement), got {min_delta!r}."
            )
        if mode is not None and mode not in MODES:
            raise ValueError(
                f"Unknown mode {mode!r}. Valid choices: {', '.join(MODES)} (or None to infer it)."
            )
        if baseline is not None and not patience:
            raise ValueError(
                f"baseline={baseline} needs a patience: it stops training when `patience` evaluations pass without "
                "beating it. Set patience >= 1 or drop the baseline."
            )
        for name, value in (("baseline", baseline), ("divergence_threshold", divergence_threshold)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value}.")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.relative = relative
        self.metric = metric
        self.mode = mode
        self.baseline = baseline
        self.check_finite = check_finite
        self.divergence_threshold = divergence_threshold
        self._key: str | None = None
        self._mode: str | None = None
        self._active = False
        self._reset()

    @staticmethod
    def _skip_saves(control: TrainerControl) -> None:
        """Weights that produced NaN/inf are neither evaluated nor checkpointed (the last good checkpoint stays)."""
        control.should_evaluate = False
        control.should_save = False

    def _reset(self) -> None:
        self._nonfinite = False
        self.best: float | None = self.baseline
        self.best_step: int | None = None
        self.wait = 0
        self.stop_reason: str | None = None
        self.stopped_step: int | None = None

    # ---- checkpointing (transformers' ExportableState protocol) ----
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "patience": self.patience,
                "min_delta": self.min_delta,
                "relative": self.relative,
                "metric": self.metric,
                "mode": self.mode,
                "baseline": self.baseline,
                "check_finite": self.check_finite,
                "divergence_threshold": self.divergence_threshold,
            },
            "attributes": {
                "best": self.best,
                "best_step": self.best_step,
                "wait": self.wait,
                "stop_reason": self.stop_reason,
                "stopped_step": self.stopped_step,
            },
        }

    def _restore(self, state: TrainerState) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, list):
            own_args = self.state()["args"]
            saved = next((s for s in saved if s.get("args") == own_args), saved[0] if saved else None)
        if saved:
            for name, value in saved.get("attributes", {}).items():
                setattr(self, name, value)
        # A resumed run was restarted on purpose: keep the counters, forget an earlier stop.
        self.stop_reason = None
        self.stopped_step = None

    # ---- the decision, independent of the Trainer ----
    def _resolve(self, args: TrainingArguments) -> None:
        self._key = metric_key(self.metric or args.metric_for_best_model or "eval_loss")
        mode = self.mode
        if mode is None:
            if args.metric_for_best_model and metric_key(args.metric_for_best_model) == self._key:
                mode = "max" if args.greater_is_better else "min"
            elif self._key.endswith("loss"):
                mode = "min"
            else:
                raise ValueError(
                    f"EarlyStopping cannot tell whether {self._key!r} should go down or up: pass "
                    f"mode='min' or mode='max' (valid choices: {', '.join(MODES)})."
                )
        self._mode = mode

    def _better(self, value: float, reference: float, margin: float = 0.0) -> bool:
        return value < reference - margin if self._mode == "min" else value > reference + margin

    def _delta_text(self) -> str:
        return f"min_delta={self.min_delta:g}" + (" (relative)" if self.relative else "")

    def _check(self, name: str, value: float, step: int) -> str | None:
        """Record one evaluation; return why training must stop, or None."""
        if self.check_finite and not math.isfinite(value):
            return f"{name} is {value} at step {step}: stopped at once (non-finite metric)."
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            return (
                f"{name} = {value:.6g} at step {step} is worse than divergence_threshold="
                f"{self.divergence_threshold:g}: stopped at once."
            )
        margin = 0.0 if self.best is None else self.min_delta * (abs(self.best) if self.relative else 1.0)
        if self.best is None or self._better(value, self.best, margin):
            self.best, self.best_step, self.wait = value, step, 0
            return None
        self.wait += 1
        if not self.patience or self.wait < self.patience:
            return None
        if self.best_step is None:
            return (
                f"{name} did not beat the baseline {self.baseline:g} by more than {self._delta_text()} in "
                f"{self.patience} evaluations: stopped at step {step}."
            )
        return (
            f"{name} did not improve on its best {self.best:.6g} (step {self.best_step}) by more than "
            f"{self._delta_text()} for {self.patience} evaluations: stopped at step {step}."
        )

    def _stop(
        self, state: TrainerState, control: TrainerControl, reason: str, nonfinite: bool = False
    ) -> None:
        control.should_training_stop = True
        if nonfinite:
            self._skip_saves(control)
            self._nonfinite = True
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_step = state.global_step
            if state.is_world_process_zero:
                logger.warning("Early stopping: %s", reason)

    # ---- TrainerCallback hooks ----
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._resolve(args)
        self._reset()
        if state.global_step > 0:
            self._restore(state)
        if args.eval_strategy == IntervalStrategy.NO and (
            self.patience or self.divergence_threshold is not None
        ):
            logger.warning(
                "EarlyStopping watches %s, but eval_strategy='no' so it is never computed: only the NaN/inf "
                "checks on the training logs are active. Set eval_strategy='epoch' or 'steps' and pass an "
                "eval_dataset to stop on it.",
                self._key,
            )
        self._active = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._active = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active or metrics is None or self._key is None:
            return  # an evaluate() call outside training
        if self._key not in metrics:
            prefix = next((k.removesuffix("_runtime") for k in metrics if k.endswith("_runtime")), None)
            if prefix is not None and not self._key.startswith(f"{prefix}_"):
                return  # another dataset of a dict eval_dataset, evaluated under its own prefix
            raise ValueError(
                f"EarlyStopping watches {self._key!r}, which is not in the evaluation metrics. Available: "
                f"{sorted(metrics)}. Set metric_for_best_model (or EarlyStopping(metric=...)) to one of them; "
                "metrics returned by compute_metrics get the 'eval_' prefix."
            )
        value = float(metrics[self._key])
        reason = self._check(self._key, value, state.global_step)
        nonfinite = reason is not None and self.check_finite and not math.isfinite(value)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = torch.tensor([float(reason is not None), float(nonfinite)], device=args.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            nonfinite = bool(flags[1].item())
            if flags[0].item() and reason is None:
                reason = f"another process stopped training at step {state.global_step}."
        if reason is not None:
            self._stop(state, control, reason, nonfinite=nonfinite)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._nonfinite:  # the epoch-end evaluation and save come after a stop
            self._skip_saves(control)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active or not self.check_finite or not logs:
            return
        for key in _TRAIN_LOG_KEYS:
            value = logs.get(key)
            if value is None or (key == "grad_norm" and args.fp16):
                continue
            if not math.isfinite(float(value)):
                reason = f"training {key} is {value} at step {state.global_step}: stopped at once."
                self._stop(state, control, reason, nonfinite=True)
                return
