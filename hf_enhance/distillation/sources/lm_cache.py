"""Offline teacher cache for causal LMs: one teacher pass, stored per token as top-k ids, log-probs and a bucket.

`cache_teacher_logits` runs the teacher once over a tokenized `datasets.Dataset` and writes, for every attended
position of every row, the teacher's ``top_k`` most likely token ids, their log-probabilities at temperature 1
and the log of the probability mass outside them. Shards of ``shard_size`` rows are Arrow files written
atomically, so an interrupted run resumes from the last finished shard. `with_teacher_cache` joins the cache to
the training rows (checking that they are the same token sequences) and `TeacherCacheCollator` pads the entries
into ``[batch, length, k]`` tensors next to the usual batch, ready for `sparse_distillation_loss`.

The cache records its teacher (`teacher_fingerprint`: class, config, weights, dtype): rerunning, resuming or
training next to a live teacher with another teacher is refused with what differs. The shards' layout is in
`hf_enhance.distillation.sources.cache_files`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, concatenate_datasets
from torch import nn
from tqdm.auto import tqdm
from transformers import default_data_collator

from hf_enhance.distillation.sources.cache_batches import (
    CACHE_BATCH_KEYS,
    TEACHER_CACHE_COLUMNS,
    TeacherCacheCollator,
)
from hf_enhance.distillation.sources.cache_files import (
    HASH_COLUMN,
    check_shard_matches,
    open_shard,
    recorded_vocab_size,
    row_hashes,
    shard_path,
    teacher_shard,
    write_atomically,
)
from hf_enhance.distillation.sources.fingerprint import fingerprint_differences, teacher_fingerprint
from hf_enhance.distillation.teacher import output_size, tokenizer_size
from hf_enhance.files import write_json_atomically

__all__ = [
    "CACHE_BATCH_KEYS",
    "TEACHER_CACHE_COLUMNS",
    "TeacherCacheCollator",
    "TeacherLogitCache",
    "cache_teacher_logits",
    "check_cache_matches_teacher",
    "join_teacher_caches",
    "load_teacher_cache",
    "with_teacher_cache",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "teacher_cache.json"
LOGPROB_DTYPES: tuple[str, ...] = ("float16", "float32")
_FORMAT_VERSION = 1


@dataclass
class TeacherLogitCache:
    """A finished teacher cache: the memory-mapped dataset and what describes it."""

    dataset: Dataset
    top_k: int
    vocab_size: int
    num_tokens: int
    bytes_per_token: float
    output_dir: str
    teacher: dict[str, Any] | None = None
    """The fingerprint of the teacher that built it (`teacher_fingerprint`); None for a cache from before 0.2."""


def cache_teacher_logits(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    output_dir: str | os.PathLike[str],
    top_k: int = 32,
    batch_size: int = 8,
    shard_size: int = 1024,
    vocab_size: int | None = None,
    logprob_dtype: str = "float16",
    show_progress: bool = True,
) -> TeacherLogitCache:
    """Run ``teacher`` once over ``dataset`` and store its top-k log-probabilities per token under ``output_dir``.

    Args:
        teacher: a causal LM (or any model returning ``[batch, length, V]`` logits from ``input_ids`` and
            ``attention_mask``), used in eval mode on its own device under ``torch.inference_mode``.
        dataset: rows with ``input_ids`` and optionally ``attention_mask`` (positions with mask 0 get no entry).
            Rows are right-padded per batch for the teacher, so each position sees exactly its causal prefix,
            as in training with right padding.
        output_dir: where the shards and ``teacher_cache.json`` go. Rerunning with the same arguments on the
            same data resumes after the last finished shard.
        top_k: ids kept per position. k = 32 costs 132 bytes/token with uint16 ids and float16 log-probs.
        batch_size: rows per teacher forward pass (rows are sorted by length within a shard to limit padding).
        shard_size: rows per shard: the unit of resumption.
        vocab_size: keep only the first ``vocab_size`` logit columns (drop embedding padding rows); default all.
        logprob_dtype: ``"float16"`` (default; about 3 significant digits) or ``"float32"`` (exact).
        show_progress: show a tqdm progress bar over rows.

    Returns:
        The `TeacherLogitCache`; its ``bytes_per_token`` (Arrow files on disk / cached tokens) is also logged.
    """
    _check_cache_arguments(dataset, top_k, batch_size, shard_size, vocab_size, logprob_dtype)
    known_vocab = vocab_size if vocab_size is not None else output_size(teacher, "causal_lm")
    if known_vocab is not None and top_k > known_vocab:
        raise ValueError(
            f"top_k={top_k} exceeds the teacher's vocabulary of {known_vocab} ids. Use top_k <= {known_vocab} "
            "(top_k equal to the vocabulary size stores the full distribution)."
        )
    output = Path(output_dir)
    settings = {
        "format_version": _FORMAT_VERSION,
        "top_k": top_k,
        "shard_size": shard_size,
        "num_rows": len(dataset),
        "vocab_size": vocab_size,
        "logprob_dtype": logprob_dtype,
        "teacher": teacher_fingerprint(teacher),
    }
    _start_or_resume(output, settings)
    num_shards = math.ceil(len(dataset) / shard_size)
    columns = [name for name in ("input_ids", "attention_mask") if name in dataset.column_names]
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    progress = tqdm(total=len(dataset), desc="Caching teacher top-k", unit="row", disable=not show_progress)
    try:
        for shard in range(num_shards):
            rows = dataset.select_columns(columns).select(
                range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
            )
            path = shard_path(output, shard)
            if path.exists() and _damaged(path):
                path.unlink()
            if path.exists():
                check_shard_matches(path, rows)
                progress.update(len(rows))
            else:
                table = teacher_shard(
                    teacher, rows, device, top_k, batch_size, vocab_size, logprob_dtype, progress.update
                )
                write_atomically(path, table)
    finally:
        progress.close()
        teacher.train(was_training)
    cache = load_teacher_cache(output)
    logger.info(
        "Teacher cache in %s: %d tokens, top_k=%d, %.1f bytes/token",
        output,
        cache.num_tokens,
        top_k,
        cache.bytes_per_token,
    )
    return cache


def load_teacher_cache(output_dir: str | os.PathLike[str]) -> TeacherLogitCache:
    """Open a finished cache written by `cache_teacher_logits` (memory-mapped; nothing is copied)."""
    output = Path(output_dir)
    metadata_path = output / METADATA_FILE
    if not metadata_path.exists():
        raise FileNotFoundError(
            f"{output} holds no teacher cache ({METADATA_FILE} is missing). Build one with cache_teacher_logits."
        )
    settings = _read_metadata(metadata_path)
    if settings is None:
        raise ValueError(
            f"{metadata_path} is damaged (not a complete settings record): writing it was interrupted or it was overwritten. Rerun "
            "cache_teacher_logits with the same arguments: it rebuilds a damaged cache."
        )
    num_shards = math.ceil(settings["num_rows"] / settings["shard_size"])
    paths = [shard_path(output, shard) for shard in range(num_shards)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise ValueError(
            f"The teacher cache in {output} is incomplete: {len(missing)} of {num_shards} shards are missing "
            f"(first: {missing[0]}). Rerun cache_teacher_logits with the same arguments to finish it."
        )
    dataset = concatenate_datasets([open_shard(path) for path in paths])
    lengths = pc.list_value_length(dataset.data.column("teacher_residual_logprob"))
    num_tokens = int(pc.sum(lengths).as_py() or 0)
    size = sum(path.stat().st_size for path in paths)
    return TeacherLogitCache(
        dataset=dataset,
        top_k=settings["top_k"],
        vocab_size=recorded_vocab_size(paths[0]),
        num_tokens=num_tokens,
        bytes_per_token=size / max(num_tokens, 1),
        output_dir=str(output),
        teacher=settings.get("teacher"),
    )


def check_same_teacher(cache: TeacherLogitCache, teacher: nn.Module) -> None:
    """Refuse a live teacher other than the one that built ``cache`` (they would grade one run two ways)."""
    if cache.teacher is None:
        logger.warning(
            "The teacher cache in %s records no teacher (built before teacher fingerprints): it cannot be checked "
            "against the live teacher_model. Rebuild it with cache_teacher_logits to have it checked.",
            cache.output_dir,
        )
        return
    current = teacher_fingerprint(teacher)
    differences = fingerprint_differences(cache.teacher, current)
    if differences:
        recorded = cache.teacher
        raise ValueError(
            f"The teacher cache in {cache.output_dir} was built by another teacher than teacher_model: they differ "
            f"in {', '.join(differences)} (cache: {recorded['class']}, {recorded['dtype']}; teacher_model: "
            f"{current['class']}, {current['dtype']}). Off-policy steps would be graded "
            "by one teacher and generated ones by the other. Pass the teacher that built the cache (as it was: "
            "same weights, same dtype), or rebuild the cache with cache_teacher_logits(teacher_model, ...)."
        )


def _damaged(path: Path) -> bool:
    """A shard that cannot be read (a kill or another program cut it short): logged, to be rebuilt."""
    try:
        open_shard(path)
    except ValueError as error:
        logger.warning("%s Rebuilding it.", error)
        return True
    return False


def with_teacher_cache(train_dataset: Dataset, cache: TeacherLogitCache | str | os.PathLike[str]) -> Dataset:
    """``train_dataset`` with the cache's ``TEACHER_CACHE_COLUMNS`` added, row for row.

    The cache must have been built from these very rows in this order: each row's attended token ids are hashed
    and compared with the hash stored at caching time, so a shuffled, filtered or re-tokenized data set is
    refused instead of being silently paired with another row's teacher. Shuffle after joining, not before.
    """
    if not isinstance(cache, TeacherLogitCache):
        cache = load_teacher_cache(cache)
    if len(train_dataset) != len(cache.dataset):
        raise ValueError(
            f"The training data has {len(train_dataset)} rows but the teacher cache has {len(cache.dataset)}. "
            "The cache is joined row by row: build it from exactly this data set (before any shuffle or filter)."
        )
    clashing = [name for name in TEACHER_CACHE_COLUMNS if name in train_dataset.column_names]
    if clashing:
        raise ValueError(
            f"The training data already has column(s) {clashing}. Remove them before joining a teacher cache "
            "(dataset.remove_columns(...))."
        )
    columns = [name for name in ("input_ids", "attention_mask") if name in train_dataset.column_names]
    expected = cache.dataset.data.column(HASH_COLUMN).to_numpy()
    start = 0
    for batch in train_dataset.select_columns(columns).iter(batch_size=1024):
        hashes = row_hashes(batch["input_ids"], batch.get("attention_mask"))
        mismatch = np.flatnonzero(hashes != expected[start : start + len(hashes)])
        if mismatch.size:
            raise ValueError(
                f"Row {start + int(mismatch[0])} of the training data has other tokens than the row the teacher "
                f"cache holds at that index ({mismatch.size} mismatches in rows {start}-{start + len(hashes) - 1}). "
                "The cache must come from the same rows in the same order: join before shuffling, or rebuild it."
            )
        start += len(hashes)
    joined = concatenate_datasets(
        [train_dataset, cache.dataset.select_columns(list(TEACHER_CACHE_COLUMNS))], axis=1
    )
    return joined.with_format("numpy", columns=list(TEACHER_CACHE_COLUMNS), output_all_columns=True)


def _check_cache_arguments(
    dataset: Dataset,
    top_k: int,
    batch_size: int,
    shard_size: int,
    vocab_size: int | None,
    logprob_dtype: str,
) -> None:
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"The data set has no 'input_ids' column (columns: {dataset.column_names}). Tokenize it first, exactly "
            "as the training data (the cache is joined to the training rows one to one)."
        )
    if len(dataset) == 0:
        raise ValueError("The data set is empty: there is nothing to cache.")
    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{name}={value!r} must be a positive int (top_k: token ids kept per position, e.g. 32; "
                "batch_size: rows per teacher forward; shard_size: rows per cache file)."
            )
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < top_k):
        raise ValueError(
            f"vocab_size={vocab_size!r} must be an int >= top_k={top_k}: it is the number of logit columns kept "
            "(e.g. len(tokenizer) to drop embedding padding)."
        )
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(
            f"logprob_dtype={logprob_dtype!r} is not supported. Valid choices: {', '.join(LOGPROB_DTYPES)}."
        )


def _start_or_resume(output: Path, settings: dict[str, Any]) -> None:
    """Write the settings on a fresh directory; on an existing cache, refuse if they differ."""
    metadata_path = output / METADATA_FILE
    if metadata_path.exists() and _read_metadata(metadata_path) is None:
        logger.warning(
            "%s is damaged (an interrupted write): its shards cannot be matched to settings, so the cache in %s is "
            "rebuilt from scratch.",
            metadata_path,
            output,
        )
        for stale in [metadata_path, *output.glob("shard-*.arrow*")]:
            stale.unlink()
    if metadata_path.exists():
        stored = _read_metadata(metadata_path) or {}
        recorded = stored.get("teacher")
        if recorded != settings["teacher"]:
            what = (
                "records no teacher (built before 0.2)"
                if recorded is None
                else (
                    f"was built by another teacher (they differ in "
                    f"{', '.join(fingerprint_differences(recorded, settings['teacher']))})"
                )
            )
            raise ValueError(
                f"{output} holds a teacher cache that {what}: its entries are not this teacher's outputs, so they "
                "can be neither reused nor completed. Use another output_dir, delete this one, or pass the teacher "
                "that built it."
            )
        changed = {
            key: (stored.get(key), value) for key, value in settings.items() if stored.get(key) != value
        }
        if changed:
            details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"{output} holds a teacher cache built with other settings ({details}), so its shards cannot be "
                "resumed. Use another output_dir, delete this one, or pass the original settings."
            )
        return
    if output.exists() and any(output.iterdir()):
        raise ValueError(
            f"{output} exists, is not empty and is not a teacher cache. Pick an empty or new output_dir so no "
            "other files are mixed with (or overwritten by) the cache."
        )
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomically(metadata_path, settings)


def _read_metadata(path: Path) -> dict[str, Any] | None:
    """The cache's settings, or None when the file is damaged (cut short by a kill before writes were atomic, or
    emptied)."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    required = ("format_version", "top_k", "shard_size", "num_rows")
    return settings if isinstance(settings, dict) and all(key in settings for key in required) else None


def join_teacher_caches(
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


def check_cache_matches_teacher(cache_columns: int, teacher_columns: int, tokenizer: Any) -> None:
    """A teacher cache and a live teacher given together must describe the same vocabulary."""
    if cache_columns not in (teacher_columns, tokenizer_size(tokenizer)):
        raise ValueError(
            f"The teacher cache holds distributions over {cache_columns} token ids, but the live teacher_model has "
            f"{teacher_columns} output columns: the cache was built from another teacher (or vocabulary). Rebuild "
            "it with cache_teacher_logits(teacher_model, ...) or pass the teacher it was built from."
        )
