"""Prompt/completion rows for causal LMs: where an answer ends, the collator, and the batch layout.

`PromptCompletionCollator` lays each row out as a left-padded prompt followed by its completion, so a generated
completion can replace the dataset's one in place (`completion_batch`). An answer ends at the first of the run's
stop tokens (`stop_token_ids`): each model's generation-config EOS ids, the tokenizer's EOS and the chat template's
end of turn (`end_of_turn_id`), as ``generate`` stops at any of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset
from jinja2 import TemplateError
from torch import nn

from hf_enhance.modeling import unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "PROMPT_KEYS",
    "TEXT_COLUMNS",
    "PromptCompletionCollator",
    "completion_batch",
    "end_of_turn_id",
    "stop_token_ids",
]

# Batch keys that carry the prompt alone (left-padded), for generation; never passed to a model.
PROMPT_KEYS: tuple[str, ...] = ("prompt_input_ids", "prompt_attention_mask")
# Dataset columns the collator reads; kept when Trainer drops the columns a model's forward does not take.
TEXT_COLUMNS: tuple[str, ...] = ("prompt", "completion", "messages")


_MARKER = "hf_enhance_end_of_turn_probe"


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token the chat template writes right after an assistant message's content (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, or the EOS); None without a chat template, or when no special or added
    token follows the content there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except (TemplateError, ValueError, TypeError, KeyError):  # a template that refuses this conversation
        return None
    if not isinstance(text, str) or _MARKER not in text:
        return None
    after = tokenizer(text[text.rindex(_MARKER) + len(_MARKER) :], add_special_tokens=False)["input_ids"]
    marked = {*tokenizer.all_special_ids, *getattr(tokenizer, "added_tokens_decoder", {})}
    return int(after[0]) if after and after[0] in marked else None


def _generation_eos_ids(model: nn.Module) -> list[int]:
    """The EOS ids of the model's generation config (an int or a list there); empty when it has none."""
    value = getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stop_token_ids(tokenizer: Any, *models: nn.Module) -> list[int]:
    """Every id that ends an answer, as ``generate`` stops at any of them: each model's generation-config EOS ids,
    the tokenizer's EOS and the chat template's end of turn, in that order, each once.

    Logs a warning when the tokenizer's EOS is not among a model's generation-config EOS ids (a tokenizer and a
    model that disagree on where a turn ends): labels then end at the first of all of them.
    """
    ids = [eos for model in models for eos in _generation_eos_ids(model)]
    tokenizer_eos = tokenizer.eos_token_id
    for model in models:
        model_ids = _generation_eos_ids(model)
        if tokenizer_eos is not None and model_ids and tokenizer_eos not in model_ids:
            logger.warning(
                "The tokenizer's EOS %s (%r) is not among %s's generation-config EOS ids %s: generated answers "
                "stop, and their labels end, at the first of any of them.",
                tokenizer_eos,
                tokenizer.eos_token,
                type(unwrap(model)).__name__,
                model_ids,
            )
    ids += [i for i in (tokenizer_eos, end_of_turn_id(tokenizer)) if i is not None]
    return list(dict.fromkeys(int(i) for i in ids))


def padding_id(tokenizer: Any) -> int:
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
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for ``[left-padded prompt | completion]`` rows, the completion's real tokens as the only labels.

    ``eos_token_id``: the stop id, or all of them (`stop_token_ids`). Tokens after a completion's first stop id
    (generation keeps sampling after it until the longest row stops) are masked like padding; the stop token itself
    stays a label, so the student learns to stop. ``position_ids`` count
    real tokens only, as ``generate`` does for left-padded prompts, so scoring sees the positions the
    completions were sampled at.
    """
    completion_mask = completion_mask.bool()
    if eos_token_id is not None:
        stops = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
        is_eos = torch.isin(completion_ids, stops)
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
        max_completion_length: completions are cut to this many tokens, the end token included (None: whole).
        end_token_id: the token each completion ends with, so the student learns to stop. Default: for chat
            ``messages`` the template's end of turn (`end_of_turn_id`: ``<|im_end|>``, ``<|eot_id|>``, ...; the EOS
            when the template has none), for ``prompt``/``completion`` text the tokenizer's EOS.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_length: int | None = None,
        max_completion_length: int | None = None,
        end_token_id: int | None = None,
    ) -> None:
        for name, value in (
            ("max_prompt_length", max_prompt_length),
            ("max_completion_length", max_completion_length),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive int or None.")
        self.tokenizer = tokenizer
        self.pad_token_id = padding_id(tokenizer)
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        eos = tokenizer.eos_token_id
        turn_end = end_of_turn_id(tokenizer)
        self.text_end_id = eos if end_token_id is None else end_token_id
        self.chat_end_id = (eos if turn_end is None else turn_end) if end_token_id is None else end_token_id

    def _texts(self, row: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        if "messages" in row and row["messages"] is not None:
            messages = list(row["messages"])
            if not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in messages):
                raise ValueError(
                    "Each of a row's 'messages' must be a dict with 'role' and 'content' (e.g. {'role': 'user', "
                    f"'content': 'Hi'}}); got {[m if not isinstance(m, Mapping) else sorted(m) for m in messages]}."
                )
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
            end = self.chat_end_id
        elif "prompt" in row and "completion" in row:
            prompt = self.tokenizer(row["prompt"])["input_ids"]
            completion = self.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
            end = self.text_end_id
        else:
            raise ValueError(
                f"A row has neither 'prompt' and 'completion' nor 'messages' (keys: {sorted(row)}). On-policy "
                "distillation needs prompts: give each row a prompt and a completion (the completion is used on "
                "off-policy steps and for evaluation), or chat messages."
            )
        if end is not None:
            completion = [*completion, end]
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
