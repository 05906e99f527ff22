"""On-policy and mixed distillation (GKD, Agarwal et al. 2024): the student learns on completions it samples.

Batches come from `PromptCompletionCollator`: each row is a prompt, left-padded, followed by a completion, so a
generated completion can replace the dataset's one in place. At every optimizer step, with probability
``lmbda`` (drawn from the seed and the step, so every process agrees), the student samples the completions of all
that step's micro-batches (on-policy); otherwise, with ``seq_kd``, the teacher samples them, else the dataset's
completions are used (off-policy). Teacher and student then score the very same token ids with the usual
objective; prompt tokens, padding and everything after a generated EOS are masked from every loss term, and the
token count that normalises the step counts completion tokens only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from datasets import Dataset
from torch import nn

from hf_enhance.distillation.placement.fsdp2 import is_sharded
from hf_enhance.distillation.sources.cache_batches import CACHE_BATCH_KEYS

if TYPE_CHECKING:
    from hf_enhance.distillation.arguments import DistillationTrainingArguments


__all__ = [
    "ON_POLICY_KEY",
    "PROMPT_KEYS",
    "TEXT_COLUMNS",
    "OnPolicySampler",
    "PromptCompletionCollator",
    "completion_batch",
]

# Batch keys that carry the prompt alone (left-padded), for generation; never passed to a model.
PROMPT_KEYS: tuple[str, ...] = ("prompt_input_ids", "prompt_attention_mask")
# Batch key of a generated batch's flag: True for the student's own samples, False for the teacher's (seq_kd).
ON_POLICY_KEY = "on_policy"
# Dataset columns the collator reads; kept when Trainer drops the columns a model's forward does not take.
TEXT_COLUMNS: tuple[str, ...] = ("prompt", "completion", "messages")


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError(
        "The tokenizer has neither a pad nor an EOS token, so prompts cannot be padded for generation. Set "
        "tokenizer.pad_token to an existing special token first."
    )


def completion_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    eos_token_id: int | None,
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for ``[left-padded prompt | completion]`` rows, the completion's real tokens as the only labels.

    Tokens after a completion's first EOS (generation keeps sampling after it until the longest row stops) are
    masked like padding; the EOS itself stays a label, so the student learns to stop. ``position_ids`` count
    real tokens only, as ``generate`` does for left-padded prompts, so scoring sees the positions the
    completions were sampled at.
    """
    completion_mask = completion_mask.bool()
    if eos_token_id is not None:
        is_eos = completion_ids == eos_token_id
        after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        completion_mask = completion_mask & ~after_eos
    completion_ids = completion_ids.masked_fill(~completion_mask, pad_token_id)
    attention_mask = torch.cat([prompt_mask.long(), completion_mask.long()], dim=1)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    labels = torch.cat(
        [torch.full_like(prompt_ids, -100), completion_ids.masked_fill(~completion_mask, -100)], dim=1
    )
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "labels": labels,
        "prompt_input_ids": prompt_ids,
        "prompt_attention_mask": prompt_mask.long(),
    }


class PromptCompletionCollator:
    """Collate prompt/completion rows for (on-policy) distillation of causal LMs.

    Rows hold ``prompt`` and ``completion`` text, or chat ``messages`` (the last one the assistant's answer, the
    others the prompt, rendered by the tokenizer's chat template with the generation prompt). The batch holds the
    prompt left-padded, followed by the completion (+ EOS) right-padded, with labels on the completion only, plus
    the prompt alone (``prompt_input_ids``, ``prompt_attention_mask``) for generation.

    Rows without text but with ``input_ids`` (e.g. an evaluation set of token blocks) are right-padded as they
    are, their ``labels`` (default: the input ids) kept, so one trainer can train on prompts and evaluate on
    blocks. `tokenize` adds to a prompt/completion data set the ``input_ids`` this collator builds from each row:
    the columns `cache_teacher_logits` caches the teacher on, for a trainer that reads off-policy steps from a
    teacher cache and grades on-policy steps with the live teacher.

    Args:
        tokenizer: the tokenizer both models share. Without a pad token its EOS token pads.
        max_prompt_length: prompts are cut to their last this many tokens (None: whole).
        max_completion_length: completions are cut to this many tokens, EOS included (None: whole).
    """

    def __init__(
        self, tokenizer: Any, max_prompt_length: int | None = None, max_completion_length: int | None = None
    ) -> None:
        for name, value in (
            ("max_prompt_length", max_prompt_length),
            ("max_completion_length", max_completion_length),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive int or None.")
        self.tokenizer = tokenizer
        self.pad_token_id = _pad_id(tokenizer)
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length

    def _texts(self, row: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        if "messages" in row and row["messages"] is not None:
            messages = list(row["messages"])
            if len(messages) < 2 or messages[-1].get("role") != "assistant":
                raise ValueError(
                    "A 'messages' row must end with the assistant's answer after at least one prompt message; "
                    f"got roles {[m.get('role') for m in messages]}."
                )
            prompt = self.tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=True
            )
            if isinstance(prompt, Mapping):
                prompt = prompt["input_ids"]
            completion = self.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        elif "prompt" in row and "completion" in row:
            prompt = self.tokenizer(row["prompt"])["input_ids"]
            completion = self.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(
                f"A row has neither 'prompt' and 'completion' nor 'messages' (keys: {sorted(row)}). On-policy "
                "distillation needs prompts: give each row a prompt and a completion (the completion is used on "
                "off-policy steps and for evaluation), or chat messages."
            )
        if self.tokenizer.eos_token_id is not None:
            completion = [*completion, self.tokenizer.eos_token_id]
        if self.max_prompt_length is not None:
            prompt = prompt[-self.max_prompt_length :]
        if self.max_completion_length is not None:
            completion = completion[: self.max_completion_length]
        if not prompt:
            raise ValueError(
                "A prompt is empty after tokenization: generation needs at least one prompt token."
            )
        return list(prompt), list(completion)

    def tokenize(self, dataset: Dataset) -> Dataset:
        """``dataset`` with ``input_ids`` and ``attention_mask``: each row's prompt + completion tokens, unpadded.

        These are the tokens the collator places in a batch (the prompt's left padding aside), so a teacher cache
        built on them joins back to the rows (`with_teacher_cache`) and lines up with the collated positions.
        """
        clashing = [name for name in ("input_ids", "attention_mask") if name in dataset.column_names]
        if clashing:
            raise ValueError(
                f"The data set already has {clashing}: tokenize adds them from the prompt/completion text. Remove "
                "them first (dataset.remove_columns(...))."
            )

        def token_ids(row: Mapping[str, Any]) -> dict[str, list[int]]:
            prompt, completion = self._texts(row)
            return {"input_ids": prompt + completion, "attention_mask": [1] * (len(prompt) + len(completion))}

        return dataset.map(token_ids, desc="Tokenizing prompts and completions")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not _has_text(rows[0]) and "input_ids" in rows[0]:
            return self._token_rows(rows)
        pairs = [self._texts(row) for row in rows]
        width = max(len(prompt) for prompt, _ in pairs)
        length = max(len(completion) for _, completion in pairs)
        pad = self.pad_token_id
        prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in pairs])
        prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in pairs])
        completion_ids = torch.tensor([c + [pad] * (length - len(c)) for _, c in pairs])
        completion_mask = torch.tensor([[1] * len(c) + [0] * (length - len(c)) for _, c in pairs])
        return completion_batch(prompt_ids, prompt_mask, completion_ids, completion_mask, None, pad)

    def _token_rows(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` rows (no prompt to generate from), labels kept or copied from the ids."""
        ids = [list(row["input_ids"]) for row in rows]
        labels = [
            list(i if row.get("labels") is None else row["labels"]) for row, i in zip(rows, ids, strict=True)
        ]
        masks = [
            [1] * len(i) if row.get("attention_mask") is None else list(row["attention_mask"])
            for row, i in zip(rows, ids, strict=True)
        ]
        width = max(len(i) for i in ids)

        def padded(values: list[list[int]], fill: int) -> torch.Tensor:
            return torch.tensor([v + [fill] * (width - len(v)) for v in values])

        return {
            "input_ids": padded(ids, self.pad_token_id),
            "attention_mask": padded(masks, 0),
            "labels": padded(labels, -100),
        }


def _has_text(row: Mapping[str, Any]) -> bool:
    return any(row.get(name) is not None for name in TEXT_COLUMNS)


@contextmanager
def generation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no gradients and gradient checkpointing off for ``generate``; all restored afterwards."""
    was_training = model.training
    # transformers 5.x renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing.
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    if checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if checkpointing:
            model.gradient_checkpointing_enable()


def sample_completions(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    pad_token_id: int,
    eos_token_id: int | None,
) -> torch.Tensor:
    """``[B, <= max_new_tokens]`` ids ``model`` samples after the left-padded prompts (temperature 0: greedy).

    ``top_k`` 0 and ``top_p`` 1 switch those filters off, whatever the model's generation config says. Call it
    inside `generation_mode`; the ids come back on the prompts' device.
    """
    sample = temperature > 0
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=prompt_ids.to(device),
        attention_mask=prompt_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=top_k if sample else None,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        # FSDP2 sharding (ours or accelerate's) is not what transformers detects: keep every rank stepping until
        # all are done, since each forward gathers weights collectively. None lets transformers decide otherwise.
        synced_gpus=True
        if is_sharded(model) and dist.is_initialized() and dist.get_world_size() > 1
        else None,
    )
    return output[:, prompt_ids.shape[1] :].to(prompt_ids.device)


class OnPolicySampler:
    """Replaces an optimizer step's completions by the student's (on-policy) or the teacher's (``seq_kd``) samples.

    A component of `DistillationTrainer` (built when ``lmbda > 0`` or ``seq_kd``). Each generated batch carries
    its own ``on_policy`` flag (`ON_POLICY_KEY`), which the trainer reads from the batch.

    Args:
        args: the run's `DistillationTrainingArguments` (lmbda, seq_kd, the generation settings, the seed).
        teacher: the placed teacher, or None (a cache only: refused, nothing would grade generated text).
        tokenizer: the tokenizer both models share (padding and EOS of generated completions).
        task: the distillation task (a causal LM is needed).
        train_dataset: checked for prompt columns when it has column names.
        autocast: the run's autocast context (generation runs under it, as the forwards do).
    """

    def __init__(
        self,
        args: DistillationTrainingArguments,
        teacher: nn.Module | None,
        tokenizer: Any,
        task: str | None,
        train_dataset: Any,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        if teacher is None:
            raise ValueError(
                f"lmbda={args.lmbda} / seq_kd={args.seq_kd} need a live teacher to grade (or write) "
                "completions generated during training, but the trainer has only a teacher_cache. Pass "
                "teacher_model= as well, or set lmbda=0 and seq_kd=False."
            )
        if task not in ("causal_lm", None):
            raise ValueError(
                f"lmbda={args.lmbda} / seq_kd={args.seq_kd} generate completions, which needs a causal "
                f"LM student; this student is a {task} model. Set lmbda=0 and seq_kd=False."
            )
        columns = getattr(train_dataset, "column_names", None)
        if columns is not None and not (
            {"prompt", "messages"} & set(columns) or "prompt_input_ids" in columns
        ):
            raise ValueError(
                f"lmbda={args.lmbda} / seq_kd={args.seq_kd} generate completions for the dataset's "
                f"prompts, but the training set has no 'prompt' (with 'completion') or 'messages' column (columns: "
                f"{columns}). Build prompt/completion rows and collate them with PromptCompletionCollator."
            )
        self.args = args
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.autocast = autocast
        self._logs: dict[str, list[float]] = {"on_policy": [], "completion_length": [], "seconds": []}

    def is_on_policy_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` is on-policy: the same draw on every process (seed and step)."""
        if self.args.lmbda >= 1.0:
            return True
        return random.Random(f"{self.args.seed}:{step}").random() < self.args.lmbda

    def swap(self, batches: list[Any], step: int, student: nn.Module) -> list[Any] | None:
        """The step's micro-batches with generated completions, or None when this step keeps the dataset's."""
        on_policy = self.is_on_policy_step(step)
        if not on_policy and not self.args.seq_kd:
            self._logs["on_policy"].append(0.0)
            return None
        missing = [key for key in PROMPT_KEYS if key not in batches[0]]
        if missing:
            raise ValueError(
                f"The batch has no {missing}: on-policy distillation and seq_kd need the prompts alone for "
                "generation. Collate prompt/completion rows with hf_enhance.PromptCompletionCollator."
            )
        generator = student if on_policy else self.teacher
        began = time.perf_counter()
        batches = [self.generate(generator, batch) for batch in batches]
        self._logs["seconds"].append(time.perf_counter() - began)
        self._logs["on_policy"].append(float(on_policy))
        self._logs["completion_length"].extend(
            float(length) for batch in batches for length in (batch["labels"] != -100).sum(1).tolist()
        )
        for batch in batches:
            batch[ON_POLICY_KEY] = on_policy
        return batches

    def generate(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its completions replaced by ``model``'s samples (labels on the completions only)."""
        prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        pad_id = _pad_id(self.tokenizer)
        eos_id = self.tokenizer.eos_token_id
        args = self.args
        with generation_mode(model), self.autocast():
            completion = sample_completions(
                model, prompt_ids, prompt_mask, max_new_tokens=args.max_new_tokens,
                temperature=args.generation_temperature, top_p=args.generation_top_p, top_k=args.generation_top_k,
                pad_token_id=pad_id, eos_token_id=eos_id,
            )  # fmt: skip
        generated = completion_batch(
            prompt_ids, prompt_mask, completion, torch.ones_like(completion), eos_id, pad_id
        )
        # The dataset's teacher-cache entries describe its completion, not this one: the live teacher grades it.
        kept = {k: v for k, v in batch.items() if k not in generated and k not in CACHE_BATCH_KEYS}
        return {**kept, **generated}

    def log_entries(self) -> dict[str, float]:
        """Means since the last log: on-policy fraction, completion length, generation seconds per step."""
        logs = self._logs
        entries = {}
        if logs["on_policy"]:
            entries["on_policy_fraction"] = sum(logs["on_policy"]) / len(logs["on_policy"])
        if logs["completion_length"]:
            entries["completion_length"] = sum(logs["completion_length"]) / len(logs["completion_length"])
        if logs["seconds"]:
            entries["generation_seconds"] = sum(logs["seconds"]) / len(logs["on_policy"])
        for values in logs.values():
            values.clear()
        return {name: round(value, 4) for name, value in entries.items()}
