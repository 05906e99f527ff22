"""A teacher cache in the training batch: `TeacherCacheCollator` turns the cache columns that `with_teacher_cache`
joined to the rows into padded tensors (`CACHE_BATCH_KEYS`) next to the usual batch, ready for
`sparse_distillation_loss`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "CACHE_BATCH_KEYS",
    "TEACHER_CACHE_COLUMNS",
    "TeacherCacheCollator",
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
