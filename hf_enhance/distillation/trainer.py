"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into any student.

The trainer is composed, not a stack of mixins: a `TeacherPlacement` (where the teacher lives and which fused
objective follows), an `OutputAlignment` (task and shared columns), the optional `HiddenStateTerm` and
`OnPolicySampler`, `StepWeights` for each micro-batch's share of the step and a `ComponentLog` for the logged
terms. One training step reads, in `compute_loss`: split the batch → settings for the batch → one objective
(cached, fused or on logits) with the hidden blocks captured → weights → log → loss.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_enhance.distillation.alignment import OutputAlignment
from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.batch import HIDDEN_TOKENS_KEY, DistillationBatch
from hf_enhance.distillation.inputs import (
    CacheArgument,
    KeepSpecialTokens,
    check_trainer_inputs,
    with_default_collator,
)
from hf_enhance.distillation.logs import ComponentLog
from hf_enhance.distillation.placement import choose_placement
from hf_enhance.distillation.placement.heads import hidden_states_match_logits
from hf_enhance.distillation.sources.cache_batches import TEACHER_CACHE_COLUMNS
from hf_enhance.distillation.sources.lm_cache import (
    check_cache_matches_teacher,
    check_same_teacher,
    join_teacher_caches,
)
from hf_enhance.distillation.teacher import (
    detect_task,
    freeze,
    load_teacher,
    output_size,
    tokenizer_size,
)
from hf_enhance.distillation.terms.hidden_states import HIDDEN_PROJECTIONS_NAME as HIDDEN_PROJECTIONS_NAME
from hf_enhance.distillation.terms.hidden_states import HiddenStateTerm
from hf_enhance.distillation.terms.on_policy import OnPolicySampler
from hf_enhance.distillation.terms.prompts import TEXT_COLUMNS
from hf_enhance.distillation.weights import StepWeights
from hf_enhance.modeling import logits_of, unwrap
from hf_enhance.objectives.fused import MAX_CHUNK_SIZE, default_chunk_size
from hf_enhance.objectives.losses import DistillationOutput, distillation_loss
from hf_enhance.objectives.settings import LossSettings
from hf_enhance.objectives.sparse import sparse_distillation_loss
from hf_enhance.training import EnhancedTrainer

logger = logging.getLogger(__name__)


class DistillationTrainer(EnhancedTrainer):
    """Trains `model` (the student) on alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE(labels).

    Takes every `transformers.Trainer` argument plus `teacher_model` (a model, or a name/path loaded with the
    student's task class and dtype). The teacher is frozen (eval mode, no gradients), placed on the
    accelerator's device, run under `torch.no_grad()` and the same autocast as the student, kept out of the
    optimizer and out of checkpoints. The student may be a transformers model, a PEFT model, or any `nn.Module`
    whose forward returns logits (or an object with `.logits`).

    Causal LMs are shifted internally (logits[:, :-1] against labels[:, 1:]); classification compares `[B, C]`
    logits with `[B]` labels. `kd_loss` and `ce_loss` are logged next to `loss`.

    With `hidden_weight > 0` the loss adds hidden_weight · hidden_loss: the distance (`hidden_distance`) between
    the output of each student block i and of teacher block `hidden_layer_map[i]`, over the tokens the KD term
    uses (padding excluded), captured by forward hooks during the forwards that already run. When the widths
    differ, `hidden_projections` (one `nn.Linear(student_width, teacher_width, bias=False)` per student block)
    bridge them: they train with the student, are saved in Trainer checkpoints (`hidden_projections.safetensors`)
    and restored on resume, and never enter the saved student. `hidden_loss` is logged next to `kd_loss`.

    Attributes:
        teacher_model: the placed teacher (None with a teacher cache alone).
        placement: where the teacher lives (`TeacherPlacement`), chosen once from the run's engine.
        loss_settings: the objective's settings (`LossSettings`) from the arguments.
        hidden_term: the hidden-state term (`HiddenStateTerm`), or None with ``hidden_weight = 0``.
        on_policy: the completion sampler (`OnPolicySampler`), or None unless ``lmbda > 0`` or ``seq_kd``.
    """

    args: DistillationTrainingArguments

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | str | None = None,
        args: DistillationTrainingArguments | None = None,
        *,
        teacher_cache: CacheArgument | None = None,
        eval_teacher_cache: CacheArgument | None = None,
        **kwargs: Any,
    ) -> None:
        args = DistillationTrainingArguments(output_dir="trainer_output") if args is None else args
        check_trainer_inputs(model, teacher_model, args, teacher_cache)
        with_default_collator(kwargs)
        task = args.distillation_task if args.distillation_task != "auto" else detect_task(model)
        teacher, teacher_size = None, None
        if teacher_cache is not None:
            if task not in ("causal_lm", None):
                raise ValueError(
                    f"teacher_cache holds per-token top-k outputs of a causal LM, but the student is a {task} "
                    "model. For classification, wrap the teacher's precomputed logits in CachedTeacher and "
                    "pass it as teacher_model=."
                )
            task = "causal_lm"
            cache = join_teacher_caches(kwargs, teacher_cache, eval_teacher_cache, teacher_model is not None)
            teacher_size = cache.vocab_size
        if teacher_model is not None:
            # Join the processes first (as Trainer would): under ZeRO-3, transformers loads a teacher given by name
            # straight into partitions, sized by the process count.
            _ = args.device
            teacher = freeze(
                load_teacher(teacher_model, model, task or "causal_lm", args.teacher_model_init_kwargs)
            )
            teacher_size = output_size(teacher, task)
            if teacher_cache is not None:
                if teacher_size is not None:
                    check_cache_matches_teacher(
                        cache.vocab_size, teacher_size, kwargs.get("processing_class")
                    )
                check_same_teacher(cache, teacher)
        super().__init__(model=model, args=args, **kwargs)
        self.add_callback(KeepSpecialTokens(model))
        self.placement = choose_placement(
            teacher, self.accelerator, fsdp=self.is_fsdp_enabled, deepspeed=self.is_deepspeed_enabled
        )
        self.teacher_model = None if teacher is None else self.placement.place(teacher)
        self.alignment = OutputAlignment(
            task, output_size(model, task), teacher_size, tokenizer_size(self.processing_class)
        )
        self.loss_settings: LossSettings = args.loss_settings()
        # Our loss honours `num_items_in_batch` whatever the student's forward signature: let Trainer count the
        # label tokens (over labels[..., 1:] for causal LMs) and skip its own gradient-accumulation division.
        self.model_accepts_loss_kwargs = True
        self.count_shifted_labels(task == "causal_lm")
        if not self.label_names:
            self.label_names = ["labels"]
        self._fused: bool | None = None  # decided (and agreed on, if collective) on the first training step
        self._component_log = ComponentLog()
        self.hidden_term: HiddenStateTerm | None = None
        if args.hidden_weight > 0:
            self.hidden_term = HiddenStateTerm(
                model, self.teacher_model, task, args.hidden_layer_map, args.hidden_distance
            )
            self.hidden_term.join(self)
        self.on_policy: OnPolicySampler | None = None
        if args.lmbda > 0 or args.seq_kd:
            self.on_policy = OnPolicySampler(
                args,
                model,
                self.teacher_model,
                self.processing_class,
                task,
                kwargs.get("train_dataset"),
                self.accelerator.autocast,
            )

    @property
    def distillation_task(self) -> str | None:
        """``causal_lm``, ``classification`` or ``token_classification``; None until the first logits tell."""
        return self.alignment.task

    @property
    def hidden_projections(self) -> nn.ModuleList | None:
        """The hidden-state term's width projections (None without the term or when the widths match)."""
        return None if self.hidden_term is None else self.hidden_term.projections

    @property
    def hidden_layer_map(self) -> list[int] | None:
        """The teacher block compared with each student block (None without the hidden-state term)."""
        return None if self.hidden_term is None else self.hidden_term.layer_map

    # ---- one step ----
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        batch = DistillationBatch.split(inputs)
        self._check_batch(batch)
        settings = self.loss_settings.for_batch(batch.on_policy)
        fused = not batch.cached and self._use_fused(model, batch.inputs)
        hidden_capture = nullcontext(None) if self.hidden_term is None else self.hidden_term.capture()
        with hidden_capture as captured:
            if batch.cached:
                result, outputs = self._cached_objective(model, batch, settings)
            elif fused:
                result, outputs = self._fused_objective(model, batch, settings), None
            else:
                result, outputs = self._logit_objective(model, batch, settings)
        hidden = None
        if captured is not None:
            hidden_loss, hidden_tokens = self.hidden_term.loss(captured, batch.inputs, batch.labels)
            hidden = HiddenStateTerm.share(
                hidden_loss, hidden_tokens, batch.hidden_tokens, result.num_tokens, num_items_in_batch
            )
        weights = self._step_weights(
            result, num_items_in_batch, all_ranks=fused and self.placement.collective
        )
        self._component_log.add(
            weights.logged(result, hidden, training=self.model.training, labels_term=not batch.on_policy),
            training=self.model.training,
            step=self.state.global_step,
        )
        loss = weights.loss(result, hidden, self.args.hidden_weight)
        return (loss, outputs) if return_outputs else loss

    def _check_batch(self, batch: DistillationBatch) -> None:
        if batch.labels is None and self.args.alpha < 1.0:
            raise ValueError(
                f"alpha={self.args.alpha} gives the label loss a weight of {1 - self.args.alpha:g}, but the batch "
                f"has no 'labels' (keys: {', '.join(batch.inputs)}). Add labels to the data (a 'labels' or "
                "'label' column, or DataCollatorForLanguageModeling(mlm=False) for causal LMs), or set "
                "alpha=1.0 for pure distillation."
            )
        if not batch.cached and self.teacher_model is None:
            raise ValueError(
                "This batch has no teacher-cache entries and the trainer has no teacher_model (it was built "
                "with teacher_cache=). Join the data with its cache first: with_teacher_cache(dataset, cache)."
            )

    def _step_weights(
        self, result: DistillationOutput, num_items_in_batch: torch.Tensor | int | None, all_ranks: bool
    ) -> StepWeights:
        return StepWeights.of(
            result.num_tokens,
            num_items_in_batch,
            all_ranks=all_ranks,
            accelerator=self.accelerator,
            tokens_across_processes=self.args.average_tokens_across_devices,
            # Set by Trainer for each optimizer step; absent when compute_loss is called outside train().
            micro_batches=getattr(self, "current_gradient_accumulation_steps", 1),
        )

    # ---- the three objectives ----
    def _logit_objective(
        self, model: nn.Module, batch: DistillationBatch, settings: LossSettings
    ) -> tuple[DistillationOutput, dict[str, Any]]:
        outputs = model(**batch.inputs)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = logits_of(self.teacher_model(**batch.inputs))
        student_logits, teacher_logits, labels = self.alignment(
            logits_of(outputs), teacher_logits, batch.labels, type(self.model).__name__
        )
        result = distillation_loss(student_logits, teacher_logits, labels, **settings.as_kwargs())
        return result, outputs if isinstance(outputs, dict) else {"logits": logits_of(outputs)}

    def _cached_objective(
        self, model: nn.Module, batch: DistillationBatch, settings: LossSettings
    ) -> tuple[DistillationOutput, dict[str, Any]]:
        """Causal LM objective against the teacher's cached top-k log-probabilities (sparse_distillation_loss)."""
        outputs = model(**batch.inputs)
        logits = logits_of(outputs)[..., : self.alignment.columns]
        # Shift the labels and the mask, not the logits: position t predicts token t + 1 and has cache entry t;
        # the last position predicts nothing. The [batch, length, vocab] logits are then never copied.
        cached = batch.cached
        mask = F.pad(cached["teacher_cache_mask"][:, :-1], (0, 1), value=False)
        labels = None if batch.labels is None else F.pad(batch.labels[:, 1:], (0, 1), value=-100)
        result = sparse_distillation_loss(
            logits,
            cached["teacher_topk_ids"],
            cached["teacher_topk_logprobs"],
            cached["teacher_residual_logprob"],
            labels,
            mask=mask,
            **settings.as_kwargs(),
        )
        return result, outputs if isinstance(outputs, dict) else {"logits": logits}

    def _fused_objective(
        self, model: nn.Module, batch: DistillationBatch, settings: LossSettings
    ) -> DistillationOutput:
        return self.placement.fused_objective(
            model,
            self._student_base(model),
            self.teacher_model,
            batch.inputs,
            batch.labels,
            autocast=self.accelerator.autocast,
            columns=self.alignment.columns,
            chunk_size=self.args.fused_chunk_size,
            **settings.as_kwargs(),
        )

    # ---- whether a step uses the fused objective ----
    def _use_fused(self, model: nn.Module, inputs: dict[str, Any]) -> bool:
        """Fused in training steps with more tokens than a chunk (every step when the objective is collective),
        where it applies: decided, explained and (collective) agreed on once, on the first such step."""
        if not model.training:
            return False
        if not self.placement.collective and self._predicted_tokens(inputs) <= self._chunk_size():
            return False
        if self._fused is None:
            self._fused = self.placement.agree(self._fused_supported(model, inputs), self.accelerator)
        return self._fused

    def _fused_supported(self, model: nn.Module, inputs: dict[str, Any]) -> bool:
        if not self.args.fused_loss or self.distillation_task != "causal_lm":
            return False
        reason = self.placement.fused_problem(self._student_base(model), self.teacher_model)
        if reason is None and not self._heads_reproduce_logits(model, inputs):
            reason = "head(final hidden states) does not reproduce a model's logits"
        if reason is not None:
            logger.warning(
                "fused_loss=True but %s; distilling on materialised logits instead (more memory on big "
                "vocabularies). Set fused_loss=False to silence this.",
                reason,
            )
        return reason is None

    def _heads_reproduce_logits(self, model: nn.Module, inputs: dict[str, Any]) -> bool:
        """Both models' heads, applied to their final hidden states, give their logits.

        Checked under the run's autocast, as the forwards run (accelerate wraps the student's forward in it): the
        rebuilt logits then go through the same half-precision matmul as the real ones.
        """
        mixed = self.args.bf16 or self.args.fp16
        with self.accelerator.autocast():
            return hidden_states_match_logits(
                model, self._student_base(model), inputs, mixed
            ) and hidden_states_match_logits(self.teacher_model, self.teacher_model, inputs, mixed)

    def _student_base(self, model: nn.Module) -> nn.Module:
        return unwrap(self.accelerator.unwrap_model(model))

    def _chunk_size(self) -> int:
        """Tokens per chunk of the fused objective: the argument, or sized from the vocabulary when known."""
        if self.args.fused_chunk_size is not None:
            return self.args.fused_chunk_size
        if not self.alignment.columns:
            return MAX_CHUNK_SIZE
        return default_chunk_size(self.alignment.columns, self.accelerator.device)

    @staticmethod
    def _predicted_tokens(inputs: dict[str, Any]) -> int:
        """Positions in this micro-batch: chunking pays off only when they exceed one chunk."""
        input_ids = inputs.get("input_ids")
        return 0 if input_ids is None else input_ids.numel()

    # ---- Trainer hooks, each delegated to the component it concerns ----
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list[Any], torch.Tensor | int | None]:
        """Trainer's prefetch of one optimizer step's micro-batches, with generated completions swapped in.

        The token count that normalises the step is taken after the swap (completion tokens only).
        """
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.on_policy is None or not batches:
            return batches, num_items
        student = self.accelerator.unwrap_model(self.model)
        gather = self.accelerator.gather if self.args.world_size > 1 else None
        generated = self.on_policy.swap(batches, self.state.global_step, student, gather)
        if generated is None:
            return batches, num_items
        return generated, self._count_batch_items(generated, device)

    def _count_batch_items(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """Trainer's label-token count; with the hidden term, its token count over the same micro-batches too,
        written into each of them (`HIDDEN_TOKENS_KEY`) for `compute_loss`."""
        num_items = super()._count_batch_items(batch_samples, device)
        if self.hidden_term is not None and num_items is not None:
            across = self.args.average_tokens_across_devices and self.args.world_size > 1
            count = self.hidden_term.count_tokens(
                batch_samples, device, self.accelerator.gather if across else None
            )
            for batch in batch_samples:
                batch[HIDDEN_TOKENS_KEY] = count
        return num_items

    def _extra_signature_columns(self) -> list[str]:
        """Keep the teacher-cache and text columns when unused columns are dropped."""
        return [*super()._extra_signature_columns(), *TEACHER_CACHE_COLUMNS, *TEXT_COLUMNS]

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.hidden_term is not None:
            self.hidden_term.average_gradients(self.accelerator)
        return loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.hidden_term is not None:
            self.hidden_term.add_to_optimizer(optimizer, self.accelerator, self.args.weight_decay)
        return optimizer

    def _gradient_module(self, model: nn.Module) -> nn.Module:
        model = super()._gradient_module(model)
        return model if self.hidden_term is None else self.hidden_term.with_model(model)

    def _save_extra_state(self, output_dir: str) -> None:
        super()._save_extra_state(output_dir)
        if self.hidden_term is not None and self.args.should_save:
            self.hidden_term.save(output_dir)

    def _load_extra_state(self, checkpoint: str) -> None:
        super()._load_extra_state(checkpoint)
        if self.hidden_term is not None:
            self.hidden_term.load(checkpoint)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self._component_log.start_evaluation()
        return super().evaluation_loop(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean kd_loss / ce_loss / hidden_loss since the last log (averaged over processes) next to
        `loss`, and the generation statistics of on-policy training."""
        device = self.accelerator.device
        self._component_log.report(
            logs, lambda value: self.accelerator.reduce(value.to(device), reduction="mean")
        )
        if "loss" in logs and self.on_policy is not None:
            logs.update(self.on_policy.log_entries())
        super().log(logs, start_time)
