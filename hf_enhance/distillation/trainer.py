"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into any student."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from transformers import default_data_collator

from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.hidden import head_bypassed, hidden_states_match_logits, plain_lm_head
from hf_enhance.distillation.hidden_trainer import HIDDEN_PROJECTIONS_NAME as HIDDEN_PROJECTIONS_NAME
from hf_enhance.distillation.hidden_trainer import HiddenStateDistillation
from hf_enhance.distillation.on_policy import PROMPT_KEYS, TEXT_COLUMNS, OnPolicyDistillation
from hf_enhance.distillation.sharded import is_sharded, shard_teacher, vocab_parallel_objective
from hf_enhance.distillation.sources.lm_cache import (
    CACHE_BATCH_KEYS,
    TEACHER_CACHE_COLUMNS,
    TeacherCacheCollator,
    TeacherLogitCache,
    load_teacher_cache,
    with_teacher_cache,
)
from hf_enhance.distillation.teacher import (
    check_teacher,
    detect_task,
    freeze,
    load_teacher,
    output_size,
    shared_output_size,
    tokenizer_size,
)
from hf_enhance.distillation.zero3 import gathered_heads_objective, partition_teacher
from hf_enhance.modeling import is_deepspeed_engine, logits_of, unwrap
from hf_enhance.objectives.fused import MAX_CHUNK_SIZE, default_chunk_size, fused_distillation_loss
from hf_enhance.objectives.losses import DistillationOutput, distillation_loss
from hf_enhance.objectives.sparse import sparse_distillation_loss
from hf_enhance.training import EnhancedTrainer

logger = logging.getLogger(__name__)


def _joined_with_caches(
    kwargs: dict[str, Any],
    teacher_cache: TeacherLogitCache | str | os.PathLike[str],
    eval_teacher_cache: TeacherLogitCache | str | os.PathLike[str] | None,
    live_teacher: bool,
) -> TeacherLogitCache:
    """Join the train (and eval) rows with their caches in `kwargs`; wrap the collator. Returns the train cache."""
    cache = (
        teacher_cache if isinstance(teacher_cache, TeacherLogitCache) else load_teacher_cache(teacher_cache)
    )
    if kwargs.get("train_dataset") is None:
        raise ValueError(
            "teacher_cache= was given without train_dataset=: the cache is joined row by row with the training "
            "data it was built from. Pass that data set as train_dataset."
        )
    kwargs["train_dataset"] = with_teacher_cache(kwargs["train_dataset"], cache)
    if kwargs.get("eval_dataset") is not None and (eval_teacher_cache is not None or not live_teacher):
        if eval_teacher_cache is None:
            raise ValueError(
                "eval_dataset was given with teacher_cache= but without eval_teacher_cache=: with no teacher in "
                "memory, evaluation needs the teacher's cached outputs for the eval rows too. Build them with "
                "cache_teacher_logits(teacher, eval_dataset, output_dir=...) and pass eval_teacher_cache=."
            )
        kwargs["eval_dataset"] = with_teacher_cache(kwargs["eval_dataset"], eval_teacher_cache)
    kwargs["data_collator"] = TeacherCacheCollator(
        kwargs.get("data_collator") or default_data_collator, require_cache=not live_teacher
    )
    return cache


def _check_cache_matches_teacher(cache_columns: int, teacher_columns: int, tokenizer: Any) -> None:
    """A teacher cache and a live teacher given together must describe the same vocabulary."""
    if cache_columns not in (teacher_columns, tokenizer_size(tokenizer)):
        raise ValueError(
            f"The teacher cache holds distributions over {cache_columns} token ids, but the live teacher_model has "
            f"{teacher_columns} output columns: the cache was built from another teacher (or vocabulary). Rebuild "
            "it with cache_teacher_logits(teacher_model, ...) or pass the teacher it was built from."
        )


class DistillationTrainer(OnPolicyDistillation, HiddenStateDistillation, EnhancedTrainer):
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
    """

    args: DistillationTrainingArguments

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | str | None = None,
        args: DistillationTrainingArguments | None = None,
        *,
        teacher_cache: TeacherLogitCache | str | os.PathLike[str] | None = None,
        eval_teacher_cache: TeacherLogitCache | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DistillationTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, DistillationTrainingArguments):
            raise TypeError(
                f"args is a {type(args).__name__}, but DistillationTrainer needs DistillationTrainingArguments "
                "(it carries alpha, temperature and the divergence). Build one with the same fields: "
                "DistillationTrainingArguments(**your_args.to_dict()) or pass the distillation fields to it."
            )
        if model is None or (teacher_model is None and teacher_cache is None):
            raise ValueError(
                "DistillationTrainer needs model= (the student) and a teacher: teacher_model= (a model or a "
                "name/path, run online), teacher_cache= (built once by cache_teacher_logits), or both (batches "
                "with cache entries read the cache; generated and uncached ones run the live teacher)."
            )
        if teacher_model is model:
            raise ValueError(
                "teacher_model is the same object as model. The teacher must be a separate, frozen network: "
                "training the student would change the teacher too. Load or copy the teacher separately "
                "(e.g. copy.deepcopy(model) before training)."
            )
        if teacher_model is not None:
            check_teacher(teacher_model, model)
        if teacher_cache is not None and args.hidden_weight > 0:
            raise ValueError(
                f"hidden_weight={args.hidden_weight} compares the student's block outputs with the teacher's, but "
                "teacher_cache= holds only the teacher's top-k log-probabilities, no hidden states. Pass the "
                "teacher as teacher_model= alone (run online) for hidden-state distillation, or set "
                "hidden_weight=0."
            )
        task = args.distillation_task if args.distillation_task != "auto" else detect_task(model)
        if teacher_cache is not None:
            if task not in ("causal_lm", None):
                raise ValueError(
                    f"teacher_cache holds per-token top-k outputs of a causal LM, but the student is a {task} "
                    "model. For classification, wrap the teacher's precomputed logits in CachedTeacher and "
                    "pass it as teacher_model=."
                )
            task = "causal_lm"
            cache = _joined_with_caches(kwargs, teacher_cache, eval_teacher_cache, teacher_model is not None)
            teacher, teacher_size = None, cache.vocab_size
        if teacher_model is not None:
            # Join the processes first (as Trainer would): under ZeRO-3, transformers loads a teacher given by name
            # straight into partitions, sized by the process count.
            _ = args.device
            teacher = freeze(
                load_teacher(teacher_model, model, task or "causal_lm", args.teacher_model_init_kwargs)
            )
            teacher_size = output_size(teacher, task)
            if teacher_cache is not None and teacher_size is not None:
                _check_cache_matches_teacher(cache.vocab_size, teacher_size, kwargs.get("processing_class"))
        super().__init__(model=model, args=args, **kwargs)

        self.distillation_task = task
        self.teacher_model = None if teacher is None else self._place_teacher(teacher)
        sizes = (output_size(model, task), teacher_size)
        self._num_columns: int | None = None
        self._columns_checked = None not in sizes
        if self._columns_checked:
            self._num_columns = shared_output_size(
                *sizes, task or "classification", tokenizer_size(self.processing_class)
            )
        # Our loss honours `num_items_in_batch` whatever the student's forward signature: let Trainer count the
        # label tokens (over labels[..., 1:] for causal LMs) and skip its own gradient-accumulation division.
        self.model_accepts_loss_kwargs = True
        self.count_shifted_labels(task == "causal_lm")
        if not self.label_names:
            self.label_names = ["labels"]
        self._fused: bool | None = None
        self._component_logs: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._component_steps: dict[str, set[int]] = defaultdict(set)  # optimizer steps each term came from
        self._on_policy_batch = False
        self._set_up_hidden_distillation(model)
        self._set_up_on_policy(task, kwargs.get("train_dataset"))

    def _place_teacher(self, teacher: nn.Module) -> nn.Module:
        """Shard the teacher beside the student under FSDP2 or DeepSpeed ZeRO-3; otherwise put it on this rank's
        device unless it is already spread over devices (`device_map`)."""
        zero3 = self._zero3
        mixed = None
        if is_deepspeed_engine(teacher) and not zero3:
            mixed = "The teacher is a DeepSpeed engine but the run does not use DeepSpeed ZeRO-3"
        elif zero3 and is_sharded(teacher):
            mixed = "The teacher was sharded with FSDP2 (shard_teacher) but the run uses DeepSpeed ZeRO-3"
        if mixed is not None:
            raise ValueError(
                f"{mixed}. Mixing engines is not supported: pass the plain teacher model, and DistillationTrainer "
                "places it the student's way (ZeRO-3: a partitioned inference engine; FSDP2: shard_teacher; "
                "otherwise whole on each device)."
            )
        if zero3:
            return partition_teacher(teacher, self.accelerator.state.deepspeed_plugin.deepspeed_config)
        if getattr(teacher, "hf_device_map", None) is not None or is_sharded(teacher):
            return teacher
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2:
            mesh = init_device_mesh(self.accelerator.device.type, (self.accelerator.num_processes,))
            return shard_teacher(teacher, mesh)
        return teacher.to(self.accelerator.device)

    @property
    def _zero3(self) -> bool:
        """Whether the run uses DeepSpeed ZeRO-3 (the student and the teacher partitioned)."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return self.is_deepspeed_enabled and getattr(plugin, "zero_stage", None) == 3

    def _aligned(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Shift for causal LMs, trim padded vocabulary columns, and check the output sizes once."""
        if not self._columns_checked:
            self._num_columns = shared_output_size(
                student_logits.shape[-1],
                teacher_logits.shape[-1],
                self.distillation_task or "classification",
                tokenizer_size(self.processing_class),
            )
            self._columns_checked = True
        task = self.distillation_task
        if task is None:
            task = "classification" if student_logits.dim() == 2 else None
            if task is None:
                raise ValueError(
                    f"The student returns logits of shape {tuple(student_logits.shape)} and its class "
                    f"({type(self.model).__name__}) does not say how they align with the labels. Set "
                    "DistillationTrainingArguments(distillation_task='causal_lm') to shift by one token, or "
                    "'token_classification' to compare position by position."
                )
            self.distillation_task = task
        if task == "causal_lm":
            student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
            labels = labels[:, 1:] if labels is not None else None
        columns = self._num_columns
        return student_logits[..., :columns], teacher_logits[..., :columns], labels

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        # On-policy batches: the student's own samples. The label term would only reinforce them, so the loss is
        # the teacher's grading alone (alpha = 1) and no ce_loss is logged for them.
        self._on_policy_batch = bool(inputs.pop("on_policy", False))
        for key in PROMPT_KEYS:
            inputs.pop(key, None)
        labels = inputs.pop("labels", None)
        if labels is None and self.args.alpha < 1.0:
            raise ValueError(
                f"alpha={self.args.alpha} gives the label loss a weight of {1 - self.args.alpha:g}, but the batch "
                f"has no 'labels' (keys: {', '.join(inputs)}). Add labels to the data (a 'labels' or 'label' "
                "column, or DataCollatorForLanguageModeling(mlm=False) for causal LMs), or set alpha=1.0 for "
                "pure distillation."
            )
        cached = {name: inputs.pop(name) for name in CACHE_BATCH_KEYS if name in inputs}
        if not cached and self.teacher_model is None:
            raise ValueError(
                "This batch has no teacher-cache entries and the trainer has no teacher_model (it was built "
                "with teacher_cache=). Join the data with its cache first: with_teacher_cache(dataset, cache)."
            )
        fused = (
            not cached
            and model.training
            # A sharded teacher's objective is collective: every rank takes the same path whatever its batch.
            and (is_sharded(self.teacher_model) or self._predicted_tokens(inputs) > self._chunk_size())
            and self._fused_ready(model, inputs)
        )
        with self._block_outputs() as block_outputs:
            if cached:
                result, outputs = self._cached_objective(model, inputs, labels, cached)
            elif fused:
                result, outputs = self._fused_objective(model, inputs, labels), None
            else:
                result, outputs = self._logit_objective(model, inputs, labels)
        hidden = None if block_outputs is None else self._hidden_term(*block_outputs, inputs, labels)
        # What this micro-batch's means are multiplied by in the loss Trainer sums over the optimizer step (and
        # averages over processes): the logged components get the same weights, so they add up to `loss`.
        logged = result
        all_ranks = fused and is_sharded(
            self.teacher_model
        )  # a vocabulary-parallel result: every rank's tokens
        if all_ranks:
            weight, processes = self._all_ranks_weight(result, num_items_in_batch)
            # Every rank holds the same all-rank terms; the logs average over ranks after scaling by processes.
            logged = dataclasses.replace(
                result,
                kd_loss=result.kd_loss / processes,
                ce_loss=None if result.ce_loss is None else result.ce_loss / processes,
            )
        elif num_items_in_batch is not None:
            # Means over this micro-batch become sums over the whole (accumulated, all-device) batch.
            weight = result.num_tokens / num_items_in_batch
            processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        else:
            weight, processes = 1.0, 1
        loss = result.loss * weight
        if all_ranks:
            # Gradient: the all-rank term times `processes` (below), as the gradient average over ranks needs.
            # Value: 1/processes of that on each rank, so Trainer's mean of the losses over ranks logs the term.
            loss = loss - (loss * (1 - 1 / processes)).detach()
        share = None
        if hidden is not None:
            share = self._hidden_share(*hidden, result.num_tokens, num_items_in_batch)
            loss = loss + self.args.hidden_weight * share
        if self._on_policy_batch:
            logged = dataclasses.replace(logged, ce_loss=None)
        self._record(logged, share, weight, processes, num_items_in_batch is None)
        return (loss * processes, outputs) if return_outputs else loss * processes

    def _all_ranks_weight(
        self, result: DistillationOutput, num_items_in_batch: torch.Tensor | int | None
    ) -> tuple[torch.Tensor | float, int]:
        """``(weight, processes)`` for a vocabulary-parallel result, which covers every rank's tokens.

        The result is the same on every rank and its gradient reaches each rank's share (its tokens, its head
        rows): the step needs it weighted by this micro-batch's share of the whole batch (all ranks' tokens
        over all ranks' count) and multiplied by the process count that FSDP's gradient average divides out.
        """
        processes = self.accelerator.num_processes
        if num_items_in_batch is None:
            return 1.0, processes
        if not self.args.average_tokens_across_devices:  # Trainer counted this rank's tokens only
            local = torch.as_tensor(num_items_in_batch, device=self.accelerator.device, dtype=torch.float32)
            num_items_in_batch = self.accelerator.reduce(local, reduction="sum")
        return result.num_tokens / num_items_in_batch, processes

    def _logit_objective(
        self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None
    ) -> tuple[DistillationOutput, dict[str, Any]]:
        outputs = model(**inputs)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = logits_of(self.teacher_model(**inputs))
        student_logits, teacher_logits, labels = self._aligned(logits_of(outputs), teacher_logits, labels)
        result = distillation_loss(student_logits, teacher_logits, labels, **self._loss_settings())
        return result, outputs if isinstance(outputs, dict) else {"logits": logits_of(outputs)}

    def _cached_objective(
        self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None, cached: dict[str, Any]
    ) -> tuple[DistillationOutput, dict[str, Any]]:
        """Causal LM objective against the teacher's cached top-k log-probabilities (sparse_distillation_loss)."""
        outputs = model(**inputs)
        logits = logits_of(outputs)[..., : self._num_columns]
        # Shift the labels and the mask, not the logits: position t predicts token t + 1 and has cache entry t;
        # the last position predicts nothing. The [batch, length, vocab] logits are then never copied.
        mask = F.pad(cached["teacher_cache_mask"][:, :-1], (0, 1), value=False)
        if labels is not None:
            labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        result = sparse_distillation_loss(
            logits,
            cached["teacher_topk_ids"],
            cached["teacher_topk_logprobs"],
            cached["teacher_residual_logprob"],
            labels,
            mask=mask,
            **self._loss_settings(),
        )
        return result, outputs if isinstance(outputs, dict) else {"logits": logits}

    def _extra_signature_columns(self) -> list[str]:
        """Keep the teacher-cache columns that `with_teacher_cache` added when unused columns are dropped."""
        return [*super()._extra_signature_columns(), *TEACHER_CACHE_COLUMNS, *TEXT_COLUMNS]

    def _fused_objective(
        self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None
    ) -> DistillationOutput:
        """Causal LM objective from hidden states and head weights, chunked: no [tokens, vocab] tensor."""
        with head_bypassed(self._student_base(model)) as student_head:
            student_hidden = logits_of(model(**inputs))
        with torch.no_grad(), self.accelerator.autocast(), head_bypassed(self.teacher_model) as teacher_head:
            teacher_hidden = logits_of(self.teacher_model(**inputs))
        labels = None if labels is None else labels[:, 1:]
        settings = {"chunk_size": self.args.fused_chunk_size, **self._loss_settings()}
        if is_sharded(self.teacher_model):
            return vocab_parallel_objective(
                student_hidden[:, :-1], student_head, teacher_hidden[:, :-1], teacher_head, labels,
                columns=self._num_columns, **settings,
            )  # fmt: skip
        columns = self._num_columns
        if self._zero3:  # both models partitioned (`_place_teacher`)
            return gathered_heads_objective(
                student_hidden[:, :-1], student_head, teacher_hidden[:, :-1], teacher_head, labels,
                columns=columns, **settings,
            )  # fmt: skip
        return fused_distillation_loss(
            student_hidden[:, :-1],
            student_head.weight[:columns],
            teacher_hidden[:, :-1],
            teacher_head.weight[:columns],
            labels,
            student_head_bias=None if student_head.bias is None else student_head.bias[:columns],
            teacher_head_bias=None if teacher_head.bias is None else teacher_head.bias[:columns],
            **settings,
        )

    def _loss_settings(self) -> dict[str, Any]:
        args = self.args
        return {
            "alpha": 1.0 if self._on_policy_batch else args.alpha,
            "temperature": args.temperature,
            "kind": args.distillation_loss,
            "beta": args.jsd_beta,
        }

    def _student_base(self, model: nn.Module) -> nn.Module:
        return unwrap(self.accelerator.unwrap_model(model))

    def _chunk_size(self) -> int:
        """Tokens per chunk of the fused objective: the argument, or sized from the vocabulary when known."""
        if self.args.fused_chunk_size is not None:
            return self.args.fused_chunk_size
        if not self._num_columns:
            return MAX_CHUNK_SIZE
        return default_chunk_size(self._num_columns, self.accelerator.device)

    @staticmethod
    def _predicted_tokens(inputs: dict[str, Any]) -> int:
        """Positions in this micro-batch: chunking pays off only when they exceed one chunk."""
        input_ids = inputs.get("input_ids")
        return 0 if input_ids is None else input_ids.numel()

    def _fused_ready(self, model: nn.Module, inputs: dict[str, Any]) -> bool:
        """Whether this step may use the fused objective; decided (and explained) on the first training step."""
        if self._fused is None:
            self._fused = self._fused_supported(model, inputs)
            if is_sharded(
                self.teacher_model
            ):  # one choice for all ranks: the sharded objective is collective
                agreed = torch.tensor(float(self._fused), device=self.accelerator.device)
                self._fused = bool(self.accelerator.reduce(agreed, reduction="mean") == 1.0)
        return self._fused

    def _fused_supported(self, model: nn.Module, inputs: dict[str, Any]) -> bool:
        if not self.args.fused_loss or self.distillation_task != "causal_lm":
            return False
        reason = None
        mixed = self.args.bf16 or self.args.fp16
        if self.is_fsdp_enabled and not is_sharded(self.teacher_model):
            reason = "FSDP1 shards the LM head, whose full weight the fused loss reads"
        elif plain_lm_head(self._student_base(model)) is None or plain_lm_head(self.teacher_model) is None:
            reason = "a model's head is not a plain nn.Linear (adapted, custom) or its config post-processes logits"
        elif not self._heads_reproduce_logits(model, inputs, mixed):
            reason = "head(final hidden states) does not reproduce a model's logits"
        if reason is not None:
            logger.warning(
                "fused_loss=True but %s; distilling on materialised logits instead (more memory on big "
                "vocabularies). Set fused_loss=False to silence this.",
                reason,
            )
        return reason is None

    def _heads_reproduce_logits(self, model: nn.Module, inputs: dict[str, Any], mixed: bool) -> bool:
        """Both models' heads, applied to their final hidden states, give their logits.

        Checked under the run's autocast, as the forwards run (accelerate wraps the student's forward in it): the
        rebuilt logits then go through the same half-precision matmul as the real ones.
        """
        with self.accelerator.autocast():
            return hidden_states_match_logits(
                model, self._student_base(model), inputs, mixed
            ) and hidden_states_match_logits(self.teacher_model, self.teacher_model, inputs, mixed)

    def _record(
        self,
        result: DistillationOutput,
        hidden_share: torch.Tensor | None,
        weight: torch.Tensor | float,
        processes: int,
        step_mean: bool,
    ) -> None:
        """Keep this micro-batch's terms for the next log.

        In training, weighted exactly as in the step's loss (`weight`, times the process count that Trainer's
        average over processes divides out; without a token count Trainer divides by the accumulation steps),
        so the logged kd_loss, ce_loss and hidden_loss add up to the logged loss. In evaluation, plain means.
        """
        training = self.model.training
        logs = self._component_logs["train" if training else "eval"]
        # Set by Trainer for each optimizer step; absent when compute_loss is called outside train().
        divisor = getattr(self, "current_gradient_accumulation_steps", 1) if step_mean else 1
        if training:
            weight = weight * processes / divisor
        terms = {"kd_loss": result.kd_loss * weight, "ce_loss": None, "hidden_loss": None}
        if result.ce_loss is not None:
            terms["ce_loss"] = result.ce_loss * weight
        if hidden_share is not None:
            scale = processes / divisor
            terms["hidden_loss"] = hidden_share * (scale if training else 1)
        for name, value in terms.items():
            if value is not None:
                logs[name].append(torch.as_tensor(value).detach().float())
                if training:
                    self._component_steps[name].add(self.state.global_step)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self._component_logs["eval"].clear()
        return super().evaluation_loop(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean kd_loss / ce_loss / hidden_loss since the last log (averaged over processes) next to `loss`."""
        prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss")), None)
        mode, prefix = ("train", "") if "loss" in logs else ("eval", prefix)
        pending = self._component_logs[mode]
        if prefix is not None and pending:
            for name, values in pending.items():
                stacked = torch.stack(values)
                steps = max(
                    len(self._component_steps[name]), 1
                )  # optimizer steps the pending values come from
                value = stacked.sum() / steps if mode == "train" else stacked.mean()
                value = self.accelerator.reduce(value.to(self.accelerator.device), reduction="mean")
                logs[f"{prefix}{name}"] = round(value.item(), 6)
            pending.clear()
        if mode == "train":
            self._component_steps.clear()
            if self._generates:
                logs.update(self._generation_log_entries())
        super().log(logs, start_time)
