"""A teacher cache in the training batch: the collator that pads its entries, and the trainer's join of the data.

`TeacherCacheCollator` turns the cache columns that `with_teacher_cache` joined to the rows into padded tensors
(`CACHE_BATCH_KEYS`) next to the usual batch, ready for `sparse_distillation_loss`. `join_teacher_caches` does
that join for `DistillationTrainer`'s train and eval data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import default_data_collator

from hf_enhance.distillation.teacher import tokenizer_size

if TYPE_CHECKING:
    from hf_enhance.distillation.sources.lm_cache import TeacherLogitCache

__all__ = [
    "CACHE_BATCH_KEYS",
    "TEACHER_CACHE_COLUMNS",
    "TeacherCacheCollator",
    "check_cache_matches_teacher",
    "join_teacher_caches",
]

TEACHER_CACHE_COLUMNS: tuple[str, ...] = (
    "teacher_topk_ids",
    "teacher_topk_logprobs",
    "teacher_residual_logprob",
)
"""Columns `with_teacher_cache` adds to the training rows and `TeacherCacheCollator` turns into tensors."""
CACHE_BATCH_KEYS: tuple[str, ...] = (*TEACHER_CACHE_COLUMNS, "teacher_cache_mask")
"""Batch entries `TeacherCacheCollator` adds: the cache columns, padded, and the mask of cached positions."""


class TeacherCacheCollator:
    """Wraps a collator: the teacher cache columns become padded tensors next to the usual batch.

    Adds ``teacher_topk_ids`` (``[B, L, k]`` int64), ``teacher_topk_logprobs`` (``[B, L, k]`` float32),
    ``teacher_residual_logprob`` (``[B, L]`` float32) and ``teacher_cache_mask`` (``[B, L]`` bool, True where the
    row has a cached entry). Entries are placed, in order, at the positions where the collated
    ``attention_mask`` is 1, so left and right padding both work. Positions without an entry hold a valid
    uniform filler over k + 1 outcomes (finite, so the loss cannot turn NaN); exclude them via the mask.

    With ``require_cache=False`` rows without any cache column (an evaluation set a live teacher grades) are
    collated by ``collator`` alone.
    """

    def __init__(
        self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], require_cache: bool = True
    ) -> None:
        self.collator = collator
        self.require_cache = require_cache

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [name for name in TEACHER_CACHE_COLUMNS if name not in features[0]]
        if len(missing) == len(TEACHER_CACHE_COLUMNS) and not self.require_cache:
            return self.collator(features)
        if missing:
            raise KeyError(
                f"The rows have no {missing} column(s): TeacherCacheCollator needs the training data joined with "
                "its teacher cache (with_teacher_cache(train_dataset, cache)). With a Trainer, keep those columns "
                "from being dropped as unused (remove_unused_columns=False or the trainer's signature columns)."
            )
        entries = [{name: feature[name] for name in TEACHER_CACHE_COLUMNS} for feature in features]
        batch = self.collator(
            [{k: v for k, v in feature.items() if k not in TEACHER_CACHE_COLUMNS} for feature in features]
        )
        batch.update(_pad_entries(entries, batch["input_ids"], batch.get("attention_mask")))
        return batch


def _pad_entries(
    entries: list[dict[str, Any]], input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    rows, length = input_ids.shape[:2]
    attended = (
        torch.ones(rows, length, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
    )
    ids = [np.asarray(entry["teacher_topk_ids"], dtype=np.int64) for entry in entries]
    top_k = next((row.shape[-1] for row in ids if row.ndim == 2 and row.shape[0]), 1)
    filler = -math.log(top_k + 1)
    topk_ids = torch.arange(top_k).expand(rows, length, top_k).clone()
    topk_logprobs = torch.full((rows, length, top_k), filler)
    residual = torch.full((rows, length), filler)
    for row, entry in enumerate(entries):
        positions = attended[row].nonzero().squeeze(1)
        count = ids[row].reshape(-1, top_k).shape[0]
        if count != positions.numel():
            raise ValueError(
                f"Row {row} of the batch has {positions.numel()} attended positions but {count} cached teacher "
                "entries. The collator must not truncate or add tokens (the cache covers each row's attended "
                "tokens as stored in the data set); use the same max_length as when caching, or none."
            )
        # torch.tensor copies: arrays served by `datasets` may be read-only views of the memory-mapped cache.
        topk_ids[row, positions] = torch.tensor(ids[row].reshape(-1, top_k))
        logprobs = np.asarray(entry["teacher_topk_logprobs"], dtype=np.float32)
        topk_logprobs[row, positions] = torch.tensor(logprobs.reshape(-1, top_k))
        residual[row, positions] = torch.tensor(
            np.asarray(entry["teacher_residual_logprob"], dtype=np.float32)
        )
    return {
        "teacher_topk_ids": topk_ids,
        "teacher_topk_logprobs": topk_logprobs,
        "teacher_residual_logprob": residual,
        "teacher_cache_mask": attended,
    }


def join_teacher_caches(
    kwargs: dict[str, Any],
    teacher_cache: TeacherLogitCache | str | os.PathLike[str],
    eval_teacher_cache: TeacherLogitCache | str | os.PathLike[str] | None,
    live_teacher: bool,
) -> TeacherLogitCache:
    """Join the train (and eval) rows with their caches in `kwargs`; wrap the collator. Returns the train cache."""
    from hf_enhance.distillation.sources.lm_cache import (
        TeacherLogitCache,
        load_teacher_cache,
        with_teacher_cache,
    )

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


def check_cache_matches_teacher(cache_columns: int, teacher_columns: int, tokenizer: Any) -> None:
    """A teacher cache and a live teacher given together must describe the same vocabulary."""
    if cache_columns not in (teacher_columns, tokenizer_size(tokenizer)):
        raise ValueError(
            f"The teacher cache holds distributions over {cache_columns} token ids, but the live teacher_model has "
            f"{teacher_columns} output columns: the cache was built from another teacher (or vocabulary). Rebuild "
            "it with cache_teacher_logits(teacher_model, ...) or pass the teacher it was built from."
        )
