"""Calibration batches: the few inputs on which importance is measured, in whatever form the user has them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

__all__ = ["CalibrationData", "calibration_batches"]

CalibrationData = torch.Tensor | Dataset | Iterable[Mapping[str, Any]]
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Batches:
    """Calibration batches on the model's device, and how many real tokens they hold."""

    batches: list[dict[str, torch.Tensor]]
    tokens: int

    @staticmethod
    def mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` bool: the real (not padded) tokens of a batch."""
        mask = batch.get("attention_mask")
        return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _padded(rows: Mapping[str, list[Any]]) -> dict[str, torch.Tensor]:
    """A batch of token rows of any lengths, right-padded, with the attention mask marking the real tokens."""
    ids = [list(row) for row in rows["input_ids"]]
    width = max((len(row) for row in ids), default=0)
    masks = rows.get("attention_mask") or [[1] * len(row) for row in ids]
    batch = {"attention_mask": torch.tensor([list(m) + [0] * (width - len(m)) for m in masks])}
    for name in ("input_ids", "token_type_ids"):
        if rows.get(name) is not None:
            batch[name] = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows[name]])
    return batch


def _rows(data: CalibrationData, batch_size: int) -> Iterable[Mapping[str, Any]]:
    if torch.is_tensor(data):
        if data.dim() != 2 or data.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"Calibration tensor of shape {tuple(data.shape)} and dtype {data.dtype}: expected token ids of "
                "shape [sequences, tokens] (int64). Tokenize the text first."
            )
        return ({"input_ids": chunk} for chunk in data.split(batch_size))
    if isinstance(data, Dataset):
        if "input_ids" not in data.column_names:
            raise ValueError(
                f"The calibration Dataset has no 'input_ids' column (columns: {data.column_names}). Tokenize "
                "it first, e.g. dataset.map(lambda row: tokenizer(row['text']))."
            )
        columns = [name for name in _MODEL_INPUTS if name in data.column_names]
        return (_padded(rows) for rows in data.select_columns(columns).iter(batch_size=batch_size))
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(
            f"Calibration data of type {type(data).__name__}: pass a [sequences, tokens] tensor of token ids, a "
            "datasets.Dataset with an 'input_ids' column, or an iterable of batches (dicts with 'input_ids', "
            "such as a DataLoader)."
        )
    return data


def calibration_batches(
    data: CalibrationData | None,
    device: torch.device,
    batch_size: int = 8,
    vocab_size: int | None = None,
    max_length: int | None = None,
) -> Batches:
    """Model-input batches (input_ids, attention_mask, token_type_ids) on ``device``; errors if there are none.

    With ``vocab_size``, token ids outside ``[0, vocab_size)`` are an error (tokenized for another model); with
    ``max_length``, a sequence longer than the teacher's positions is.
    """
    if batch_size < 1:
        raise ValueError(f"calibration_batch_size={batch_size} must be >= 1.")
    if data is None:
        raise ValueError(
            "This choice is measured on calibration data, and none was given. Pass calibration= (a few batches "
            "of in-domain token ids; 16 sequences of a few hundred tokens are usually enough), or choose the "
            "layers without data: layers=[...] or layer_strategy='uniform', and no width pruning."
        )
    batches, tokens = [], 0
    for row in _rows(data, batch_size):
        if "input_ids" not in row:
            raise ValueError(f"A calibration batch has no 'input_ids' (keys: {sorted(row)}).")
        batch = {
            name: torch.as_tensor(row[name]).to(device) for name in _MODEL_INPUTS if row.get(name) is not None
        }
        if batch["input_ids"].dim() == 1:
            batch = {name: value[None] for name, value in batch.items()}
        ids = batch["input_ids"]
        if vocab_size is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(
                f"The calibration data holds token ids from {int(ids.min())} to {int(ids.max())}, outside the "
                f"teacher's vocabulary of {vocab_size}: it was tokenized for another model. Tokenize it with the "
                "teacher's tokenizer."
            )
        if max_length is not None and ids.shape[-1] > max_length:
            raise ValueError(
                f"A calibration sequence has {ids.shape[-1]} tokens, but the teacher takes at most {max_length} "
                "positions (its config's max_position_embeddings / n_positions). Cut the sequences to at most "
                f"{max_length} tokens (tokenizer(..., truncation=True, max_length={max_length}))."
            )
        count = int(Batches.mask(batch).sum())
        if count:
            batches.append(batch)
            tokens += count
    if not batches:
        raise ValueError(
            "The calibration data is empty (no batch with a real token). Importance cannot be measured on "
            "nothing: pass a few batches of in-domain token ids."
        )
    return Batches(batches, tokens)
