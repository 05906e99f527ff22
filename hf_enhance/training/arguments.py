"""`EnhancedTrainingArguments`: `TrainingArguments` whose defaults evaluate, keep the best model and stop early."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from hf_enhance.training.clipping import ADAPTIVE_CLIP_METHODS, AdaptiveGradClip
from hf_enhance.training.early_stopping import EarlyStopping

logger = logging.getLogger(__name__)

CLIP_MODES = ("norm", "value", *ADAPTIVE_CLIP_METHODS)


@dataclass
class EnhancedTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that evaluate every epoch, keep the best checkpoint and stop early.

    Changed defaults: `eval_strategy="epoch"`, `save_strategy="epoch"`, `load_best_model_at_end=True`,
    `metric_for_best_model="eval_loss"`, `save_total_limit=2` (the best checkpoint and the latest are kept);
    `max_grad_norm=1.0` as in transformers. New: early stopping (`early_stopping_*`, `stop_on_nonfinite`,
    `divergence_threshold`) and the gradient clipping mode (`grad_clip_mode` and its settings).

    Evaluation off (`eval_strategy="no"`, or no `eval_dataset` given to `EnhancedTrainer`) switches patience-based
    early stopping and best-model loading off with one warning instead of an error. With
    `eval_strategy="steps"` and `save_strategy` left at `"epoch"`, checkpoints follow the evaluations
    (`save_strategy="steps"`, `save_steps=eval_steps`) so the best one can be loaded at the end.
    """

    # ---- transformers fields with new defaults ----
    eval_strategy: IntervalStrategy | str = field(
        default="epoch",
        metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch' (transformers: 'no')."},
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch",
        metadata={
            "help": "When to save checkpoints: 'no', 'steps', 'epoch' or 'best' (transformers: 'steps')."
        },
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={
            "help": "Load the best checkpoint (by metric_for_best_model) at the end (transformers: False)."
        },
    )
    metric_for_best_model: str | None = field(
        default="eval_loss",
        metadata={
            "help": "Metric that picks the best checkpoint and drives early stopping (transformers: None)."
        },
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={
            "help": "Checkpoints kept on disk; the best one is never deleted (transformers: None = all)."
        },
    )
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={
            "help": "Clipping threshold: the max global L2 norm ('norm'), the max absolute value of a gradient "
            "element ('value'); unused by 'autoclip'/'zclip'. 0 or None turns clipping off in every mode."
        },
    )

    # ---- early stopping ----
    early_stopping_patience: int | None = field(
        default=3,
        metadata={
            "help": "Evaluations without improvement before stopping. None or 0: no patience-based stop."
        },
    )
    early_stopping_min_delta: float = field(
        default=0.0,
        metadata={
            "help": "An evaluation improves only if it beats the best by more than this; the best moves only then."
        },
    )
    early_stopping_relative: bool = field(
        default=False,
        metadata={
            "help": "Read early_stopping_min_delta as a fraction of the best value (0.01 = one percent better)."
        },
    )
    early_stopping_baseline: float | None = field(
        default=None,
        metadata={
            "help": "Value the metric must beat within early_stopping_patience evaluations, or training stops."
        },
    )
    stop_on_nonfinite: bool = field(
        default=True,
        metadata={"help": "Stop at once when the loss, the gradient norm or the eval metric is NaN/inf."},
    )
    divergence_threshold: float | None = field(
        default=None,
        metadata={"help": "Stop at once when the eval metric is worse than this (e.g. eval_loss above it)."},
    )
    skip_nonfinite_steps: bool = field(
        default=True,
        metadata={
            "help": "Skip an optimizer step whose gradient norm is NaN/inf: weights and optimizer state stay as "
            "they were (the learning-rate schedule still advances); skipped steps are counted and logged as "
            "skipped_steps. Under fp16 the GradScaler already skips them."
        },
    )

    # ---- gradient clipping ----
    grad_clip_mode: str = field(
        default="norm",
        metadata={
            "help": "'norm' (clip the global L2 norm to max_grad_norm, as transformers), 'value' (clamp each "
            "element to +-max_grad_norm), 'autoclip' (percentile of the norm history, Seetharaman et al. 2020) "
            "or 'zclip' (z-score of the norm against its moving mean and variance, Kumar et al. 2025)."
        },
    )
    autoclip_percentile: float = field(
        default=10.0, metadata={"help": "AutoClip: percentile of the gradient-norm history to clip at."}
    )
    autoclip_history_size: int | None = field(
        default=None,
        metadata={"help": "AutoClip: only the last N norms count. None: the whole run (as the paper)."},
    )
    zclip_z_threshold: float = field(
        default=2.5, metadata={"help": "ZClip: z-score above which a norm is clipped."}
    )
    zclip_alpha: float = field(
        default=0.97, metadata={"help": "ZClip: smoothing factor of the moving mean/variance."}
    )
    zclip_warmup_steps: int = field(
        default=25,
        metadata={"help": "ZClip: steps that initialise the mean and variance (no clipping before)."},
    )
    adaptive_clip_max_norm: float | None = field(
        default=None,
        metadata={"help": "AutoClip/ZClip: hard ceiling on the adaptive threshold. None: no ceiling."},
    )

    def __post_init__(self) -> None:
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0
        if self.grad_clip_mode not in CLIP_MODES:
            raise ValueError(
                f"Unknown grad_clip_mode {self.grad_clip_mode!r}. Valid choices: {', '.join(CLIP_MODES)}."
            )
        if self.max_grad_norm < 0:
            raise ValueError(
                f"max_grad_norm must be >= 0 (0 or None: no clipping), got {self.max_grad_norm}."
            )
        # Build both once so that bad settings fail here, before any work, with the components' messages.
        for build in (self.early_stopping_callback, self.grad_clipper):
            try:
                build()
            except ValueError as err:
                raise ValueError(
                    f"Invalid EnhancedTrainingArguments (early_stopping_*/clipping fields): {err}"
                ) from err

        eval_strategy = IntervalStrategy(self.eval_strategy)
        if eval_strategy == IntervalStrategy.NO:
            self._switch_off_eval_dependents("eval_strategy='no'")
        elif (
            eval_strategy == IntervalStrategy.STEPS
            and self.load_best_model_at_end
            and SaveStrategy(self.save_strategy) == SaveStrategy.EPOCH
        ):
            self.save_strategy = SaveStrategy.STEPS
            self.save_steps = self.eval_steps or self.logging_steps
            logger.info(
                "eval_strategy='steps' with load_best_model_at_end: saving every %s steps, with each evaluation.",
                self.save_steps,
            )
        super().__post_init__()

    def _switch_off_eval_dependents(self, reason: str) -> None:
        """Turn off what needs evaluation, with one warning naming what was on."""
        if SaveStrategy(self.save_strategy) == SaveStrategy.BEST:
            raise ValueError(
                f"save_strategy='best' saves a checkpoint when the eval metric improves, but {reason}: nothing "
                "would ever be saved. Pass an eval_dataset with eval_strategy='epoch' or 'steps', or use "
                "save_strategy='epoch' or 'steps'."
            )
        switched = []
        if self.early_stopping_patience:
            switched.append(f"early stopping (early_stopping_patience={self.early_stopping_patience})")
        if self.divergence_threshold is not None:
            switched.append(f"the divergence stop (divergence_threshold={self.divergence_threshold:g})")
        if self.load_best_model_at_end:
            switched.append("best-model loading (load_best_model_at_end=True)")
        self.early_stopping_patience = None
        self.early_stopping_baseline = None
        self.divergence_threshold = None
        self.load_best_model_at_end = False
        if switched:
            logger.warning(
                "%s: evaluation is off, so %s %s switched off. Pass an eval_dataset with eval_strategy='epoch' "
                "or 'steps' to use them, or set early_stopping_patience=None and load_best_model_at_end=False "
                "to silence this warning.",
                reason,
                " and ".join(filter(None, [", ".join(switched[:-1]), switched[-1]])),
                "is" if len(switched) == 1 else "are",
            )

    def without_evaluation(self, reason: str) -> EnhancedTrainingArguments:
        """A copy with evaluation off and what depends on it switched off (one warning). `self` is unchanged."""
        args = copy.copy(self)
        args.eval_strategy = IntervalStrategy.NO
        args.do_eval = False
        args._switch_off_eval_dependents(reason)
        return args

    def early_stopping_callback(self) -> EarlyStopping | None:
        """The `EarlyStopping` these arguments ask for, or None when every check is off."""
        if not (
            self.early_stopping_patience or self.stop_on_nonfinite or self.divergence_threshold is not None
        ):
            return None
        return EarlyStopping(
            patience=self.early_stopping_patience or None,
            min_delta=self.early_stopping_min_delta,
            relative=self.early_stopping_relative,
            baseline=self.early_stopping_baseline,
            check_finite=self.stop_on_nonfinite,
            divergence_threshold=self.divergence_threshold,
        )

    def grad_clipper(self) -> AdaptiveGradClip | None:
        """The `AdaptiveGradClip` for an adaptive `grad_clip_mode`, else None."""
        if self.grad_clip_mode not in ADAPTIVE_CLIP_METHODS:
            return None
        return AdaptiveGradClip(
            self.grad_clip_mode,
            percentile=self.autoclip_percentile,
            history_size=self.autoclip_history_size,
            z_threshold=self.zclip_z_threshold,
            alpha=self.zclip_alpha,
            warmup_steps=self.zclip_warmup_steps,
            max_norm=self.adaptive_clip_max_norm,
        )
