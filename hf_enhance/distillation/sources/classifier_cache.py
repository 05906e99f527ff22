"""`CachedTeacher`: a frozen teacher's logits computed once, served to `DistillationTrainer` as a teacher module.

A frozen teacher is a fixed function of its inputs, so running it again every epoch repeats the same work. For
sequence classification the logits of a whole data set fit in memory (``rows x num_labels`` floats):
`CachedTeacher.from_model` runs the teacher once over the data sets the trainer will see and keeps one row of
logits per distinct token sequence. The resulting module is a drop-in ``teacher_model``: its forward looks the
batch's sequences up (padding ignored) and returns their logits, so an epoch of distillation costs only the
student's forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_enhance.modeling import logits_of

__all__ = ["TEACHER_INPUT_COLUMNS", "CachedTeacher"]

TEACHER_INPUT_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
"""Batch entries passed to the teacher when the cache is built."""
_COLLATED_COLUMNS = (*TEACHER_INPUT_COLUMNS, "label", "labels")

_Key = tuple[int, ...]


def _keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[_Key]:
    """One key per row: the token ids at unmasked positions."""
    if attention_mask is None:
        return [tuple(row) for row in input_ids.tolist()]
    return [
        tuple(token for token, keep in zip(ids, mask, strict=True) if keep)
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)
    ]


class CachedTeacher(nn.Module):
    """Teacher stand-in returning logits computed once, looked up by each row's token ids.

    Build it with `from_model` (or from token sequences and their logits), then pass it as
    ``DistillationTrainer(teacher_model=...)``. Rows with the same tokens share one entry (a frozen teacher gives
    them the same logits). A sequence that was not cached raises a ``KeyError``: the cache must cover every data
    set the trainer runs the teacher on, the evaluation set included (the eval loss has a distillation term).
    """

    def __init__(self, sequences: Sequence[Sequence[int]], logits: torch.Tensor) -> None:
        super().__init__()
        if logits.dim() != 2 or logits.shape[0] != len(sequences):
            raise ValueError(
                f"Expected one row of logits per sequence: got {len(sequences)} sequences and logits of shape "
                f"{tuple(logits.shape)}. Pass logits as a [num_sequences, num_labels] tensor."
            )
        self.index: dict[_Key, int] = {}
        for row, sequence in enumerate(sequences):
            self.index.setdefault(tuple(int(token) for token in sequence), row)
        self.register_buffer("logits", logits.detach().float().clone())

    @property
    def num_labels(self) -> int:
        return int(self.logits.shape[1])

    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        teacher: nn.Module,
        datasets: Dataset | Iterable[Dataset],
        data_collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> CachedTeacher:
        """Run ``teacher`` (in eval mode, on its own device) once over the tokenized ``datasets``.

        Args:
            teacher: the fine-tuned teacher; it is put in eval mode and not otherwise changed.
            datasets: tokenized data set(s) with ``input_ids`` (and ``attention_mask``); give every split the
                trainer will see (train and eval). Only the token columns (and labels, for collators that
                need them) are collated; only ``TEACHER_INPUT_COLUMNS`` reach the teacher.
            data_collator: pads a list of rows into a batch, e.g. ``DataCollatorWithPadding(tokenizer)``; use the
                collator the trainer uses, so the cached sequences are tokenized the same way.
            batch_size: rows per teacher forward pass.
            show_progress: show a tqdm progress bar.
        """
        if isinstance(datasets, Dataset):
            datasets = [datasets]
        teacher.eval()
        device = next(teacher.parameters()).device
        sequences: list[_Key] = []
        chunks: list[torch.Tensor] = []
        for dataset in datasets:
            if "input_ids" not in dataset.column_names:
                raise ValueError(
                    f"The data set has no 'input_ids' column (columns: {dataset.column_names}). Tokenize it first, "
                    "the same way as the data the trainer receives."
                )
            columns = [name for name in _COLLATED_COLUMNS if name in dataset.column_names]
            loader = DataLoader(
                dataset.select_columns(columns), batch_size=batch_size, collate_fn=data_collator
            )
            for collated in tqdm(loader, desc="Caching teacher logits", disable=not show_progress):
                batch = {
                    name: collated[name].to(device) for name in TEACHER_INPUT_COLUMNS if name in collated
                }
                chunks.append(logits_of(teacher(**batch)).float().cpu())
                sequences.extend(_keys(batch["input_ids"], batch.get("attention_mask")))
        if not chunks:
            raise ValueError("The data sets are empty: there is nothing to cache.")
        return cls(sequences, torch.cat(chunks))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        """The cached logits of each row (``[batch, num_labels]``), whatever the padding."""
        rows = []
        for key in _keys(input_ids, attention_mask):
            row = self.index.get(key)
            if row is None:
                raise KeyError(
                    f"CachedTeacher has no logits for a sequence of {len(key)} tokens starting {list(key[:8])}: it "
                    "was not in the data sets the cache was built from. Build it from every split the trainer "
                    "sees (train and eval), tokenized and collated exactly as the trainer's inputs."
                )
            rows.append(row)
        return self.logits[torch.tensor(rows, device=self.logits.device)]
