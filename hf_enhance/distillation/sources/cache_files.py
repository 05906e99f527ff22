"""The teacher cache on disk: Arrow shards written atomically, row hashes, and the teacher pass that fills a shard.

Layout of a shard (one row per input row, one entry per attended position, in position order):

- ``teacher_topk_ids``: ``[positions][k]`` uint16 when the vocabulary has at most 65536 ids, else int32.
- ``teacher_topk_logprobs``: ``[positions][k]`` float16 by default (``logprob_dtype``), sorted descending.
- ``teacher_residual_logprob``: ``[positions]`` float32, ``log(1 − sum of the k probabilities)`` computed
  exactly (``logsumexp`` over the other ids); ``-inf`` when k equals the vocabulary size.
- ``input_ids_hash``: int64 digest of the row's attended token ids, used to check alignment when joining.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from torch import nn

from hf_enhance.modeling import logits_of

HASH_COLUMN = "input_ids_hash"
_SCHEMA_KEY = b"hf_enhance.teacher_cache"


def open_shard(path: Path) -> Dataset:
    """A finished shard, memory-mapped; a damaged one (cut short, overwritten) is a ValueError naming it."""
    try:
        return Dataset.from_file(str(path))
    except (pa.ArrowInvalid, OSError, ValueError) as error:
        raise ValueError(
            f"The teacher cache shard {path} is damaged ({error}). Rerun cache_teacher_logits with the same "
            "arguments: it rebuilds a damaged shard."
        ) from error


def shard_path(output: Path, shard: int) -> Path:
    return output / f"shard-{shard:05d}.arrow"


def write_atomically(path: Path, table: pa.Table) -> None:
    """Arrow IPC stream (the format `Dataset.from_file` maps), renamed into place once complete."""
    partial = path.with_suffix(f".arrow.partial-{os.getpid()}")  # one name per writer: writers never collide
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(partial, path)


def check_shard_matches(path: Path, rows: Dataset) -> None:
    stored = open_shard(path).data.column(HASH_COLUMN).to_numpy()
    hashes = row_hashes(
        rows["input_ids"], rows["attention_mask"] if "attention_mask" in rows.column_names else None
    )
    if len(stored) != len(hashes) or not np.array_equal(stored, hashes):
        raise ValueError(
            f"The finished shard {path} was built from other rows than this data set holds at those indices. The "
            "directory belongs to another data set: use a new output_dir, or delete this one to rebuild."
        )


def row_hashes(input_ids: Iterable[Any], attention_mask: Iterable[Any] | None) -> np.ndarray:
    """int64 digest of each row's attended token ids."""
    masks = attention_mask if attention_mask is not None else [None] * len(input_ids)  # type: ignore[arg-type]
    digests = []
    for ids, mask in zip(input_ids, masks, strict=True):
        tokens = np.asarray(ids, dtype=np.int64)
        if mask is not None:
            tokens = tokens[np.asarray(mask, dtype=bool)]
        digest = hashlib.blake2b(tokens.tobytes(), digest_size=8).digest()
        digests.append(int.from_bytes(digest, "little", signed=True))
    return np.asarray(digests, dtype=np.int64)


@torch.inference_mode()
def teacher_shard(
    teacher: nn.Module,
    rows: Dataset,
    device: torch.device,
    top_k: int,
    batch_size: int,
    vocab_size: int | None,
    logprob_dtype: str,
    on_rows: Callable[[int], Any],
) -> pa.Table:
    """Teacher top-k entries for every attended position of ``rows``, as one Arrow table in row order."""
    input_ids = [np.asarray(ids, dtype=np.int64) for ids in rows["input_ids"]]
    if "attention_mask" in rows.column_names:
        masks = [np.asarray(mask, dtype=bool) for mask in rows["attention_mask"]]
    else:
        masks = [np.ones(len(ids), dtype=bool) for ids in input_ids]
    for index, (ids, mask) in enumerate(zip(input_ids, masks, strict=True)):
        if ids.shape != mask.shape:
            raise ValueError(
                f"Row {index} has {len(ids)} input_ids but an attention_mask of {len(mask)}: they must align."
            )
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [None] * len(input_ids)  # type: ignore[list-item]
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        batch_rows = order[start : start + batch_size]
        width = max(1, max(len(input_ids[i]) for i in batch_rows))
        ids = torch.zeros(len(batch_rows), width, dtype=torch.long)
        mask = torch.zeros(len(batch_rows), width, dtype=torch.long)
        for slot, row in enumerate(batch_rows):
            ids[slot, : len(input_ids[row])] = torch.from_numpy(input_ids[row])
            mask[slot, : len(masks[row])] = torch.from_numpy(masks[row].astype(np.int64))
        logits = logits_of(teacher(input_ids=ids.to(device), attention_mask=mask.to(device)))
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
            raise ValueError(
                f"The teacher returned logits of shape {tuple(logits.shape)} for input_ids {tuple(ids.shape)}; the "
                "cache needs one distribution per position ([batch, length, V]), as a causal LM returns."
            )
        if vocab_size is not None and vocab_size > logits.shape[-1]:
            raise ValueError(
                f"vocab_size={vocab_size} exceeds the teacher's {logits.shape[-1]} logit columns; pass at most "
                f"{logits.shape[-1]}."
            )
        logits = logits[..., :vocab_size]
        if top_k > logits.shape[-1]:
            raise ValueError(f"top_k={top_k} exceeds the teacher's vocabulary of {logits.shape[-1]} ids.")
        for slot, row in enumerate(batch_rows):
            log_probs = torch.log_softmax(logits[slot, mask[slot].bool().to(device)].float(), dim=-1)
            values, indices = log_probs.topk(top_k, dim=-1)
            residual = torch.logsumexp(log_probs.scatter(-1, indices, -math.inf), dim=-1)
            results[row] = (indices.cpu().numpy(), values.cpu().numpy(), residual.cpu().numpy())
        on_rows(len(batch_rows))
    return _arrow_table(results, row_hashes(input_ids, masks), logits.shape[-1], top_k, logprob_dtype)


def _arrow_table(
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    hashes: np.ndarray,
    vocab_size: int,
    top_k: int,
    logprob_dtype: str,
) -> pa.Table:
    counts = np.array([len(residual) for _, _, residual in results], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    ids_dtype = np.uint16 if vocab_size <= 2**16 else np.int32

    def per_position(arrays: list[np.ndarray], dtype: Any) -> pa.Array:
        flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(dtype)
        return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat), top_k))

    residuals = np.concatenate([residual for _, _, residual in results]).astype(np.float32)
    return pa.table(
        {
            "teacher_topk_ids": per_position([ids for ids, _, _ in results], ids_dtype),
            "teacher_topk_logprobs": per_position([lp for _, lp, _ in results], np.dtype(logprob_dtype)),
            "teacher_residual_logprob": pa.ListArray.from_arrays(offsets, pa.array(residuals)),
            HASH_COLUMN: pa.array(hashes),
        },
        metadata={_SCHEMA_KEY: json.dumps({"vocab_size": vocab_size, "top_k": top_k})},
    )


def recorded_vocab_size(path: Path) -> int:
    """The teacher's vocabulary size, recorded in a shard's schema metadata."""
    with pa.memory_map(str(path)) as source:
        metadata = pa.ipc.open_stream(source).schema.metadata or {}
    return int(json.loads(metadata[_SCHEMA_KEY])["vocab_size"])
