"""Small students for distilling transformer classifiers: `GRUClassifier`, a recurrent sentence classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["POOLINGS", "GRUClassifier", "projected_embeddings"]

POOLINGS: tuple[str, ...] = ("max", "mean", "last")


def projected_embeddings(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``weight`` (``[V, D]``) reduced to its top ``dim`` principal components (``[V, dim]``, ``dim <= D``).

    The rows are centred and projected on the right singular vectors of the largest singular values, so the
    reduced table keeps as much of the geometry between token vectors as ``dim`` dimensions can hold. With
    ``dim == D`` the table is returned unchanged (as a float32 copy).
    """
    vocab_size, width = weight.shape
    if not 0 < dim <= min(vocab_size, width):
        raise ValueError(
            f"Cannot project {width}-dim embeddings to {dim} dims: the target size must be in [1, {min(vocab_size, width)}] "
            "(principal components can only reduce). Use embedding_dim <= the teacher's hidden size, or None to "
            "keep the teacher's size."
        )
    weight = weight.detach().float().clone()
    if dim == width:
        return weight
    centred = weight - weight.mean(0, keepdim=True)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    return centred @ components[:dim].T


class GRUClassifier(nn.Module):
    """Embedding → GRU (bidirectional by default) → masked pooling over time → dropout → linear head.

    ``forward(input_ids, attention_mask=None, labels=None)`` returns a `SequenceClassifierOutput` whose ``loss`` is
    the cross-entropy when ``labels`` are given, so it trains with a plain `Trainer` and as the student of a
    `DistillationTrainer`. Padded positions never reach the GRU (sequences are packed by length), so results do
    not depend on how much padding a batch has. Padding must be on the right (``tokenizer.padding_side="right"``).

    Args:
        vocab_size: rows of the embedding table (the tokenizer's vocabulary size).
        num_labels: number of classes.
        embedding_dim: width of the token vectors.
        hidden_size: GRU hidden size per direction.
        num_layers: stacked GRU layers.
        bidirectional: read the sentence in both directions.
        pooling: ``"max"`` or ``"mean"`` over the GRU outputs at real tokens, or ``"last"`` (the final hidden
            state of each direction).
        dropout: dropout on the embeddings, between GRU layers and before the head.
        padding_idx: embedding row of the padding token (kept at zero, never trained).
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int = 2,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        pooling: str = "max",
        dropout: float = 0.1,
        padding_idx: int | None = 0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}. Valid choices: {', '.join(POOLINGS)}.")
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_labels", num_labels),
            ("embedding_dim", embedding_dim),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.num_labels = num_labels
        self.pooling = pooling
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.gru = nn.GRU(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size * (2 if bidirectional else 1), num_labels)

    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        num_labels: int | None = None,
        embedding_dim: int | None = None,
        freeze_embeddings: bool = False,
        **kwargs: object,
    ) -> GRUClassifier:
        """A `GRUClassifier` over the teacher's vocabulary whose embeddings start from the teacher's.

        The teacher's input embedding table (``teacher.get_input_embeddings()``) is copied; when
        ``embedding_dim`` is smaller than the teacher's width it is reduced to its top principal components
        (`projected_embeddings`). The student must read the teacher's token ids: tokenize with the teacher's
        tokenizer. ``num_labels`` defaults to ``teacher.config.num_labels``, the padding row to the teacher's
        ``pad_token_id``; other keyword arguments go to the constructor.
        """
        get_embeddings = getattr(teacher, "get_input_embeddings", None)
        table = get_embeddings() if callable(get_embeddings) else None
        if not isinstance(table, nn.Embedding):
            raise TypeError(
                f"{type(teacher).__name__} has no get_input_embeddings() returning an nn.Embedding, so there is no "
                "table to copy. Pass a transformers model, or build GRUClassifier(vocab_size=...) directly."
            )
        config = getattr(teacher, "config", None)
        if num_labels is None:
            num_labels = getattr(config, "num_labels", None)
            if num_labels is None:
                raise ValueError(f"{type(teacher).__name__} has no config.num_labels; pass num_labels=.")
        if "padding_idx" not in kwargs:
            kwargs["padding_idx"] = getattr(config, "pad_token_id", None)
        weight = table.weight
        dim = embedding_dim or weight.shape[1]
        student = cls(weight.shape[0], num_labels=num_labels, embedding_dim=dim, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            student.embeddings.weight.copy_(projected_embeddings(weight, dim))
            if student.embeddings.padding_idx is not None:
                student.embeddings.weight[student.embeddings.padding_idx].zero_()
        student.embeddings.weight.requires_grad_(not freeze_embeddings)
        return student

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        batch, width = input_ids.shape
        positions = torch.arange(width, device=input_ids.device)
        if attention_mask is None:
            lengths = torch.full((batch,), width, device=input_ids.device)
        else:
            lengths = attention_mask.sum(1)
            if not torch.equal(attention_mask.bool(), positions < lengths[:, None]):
                raise ValueError(
                    "GRUClassifier needs right padding (attention_mask = ones then zeros per row), got a mask with "
                    "padding on the left or inside a sequence. Set tokenizer.padding_side = 'right'."
                )
        if bool((lengths == 0).any()):
            raise ValueError("GRUClassifier got an empty sequence (attention_mask all zeros in a row).")
        packed = pack_padded_sequence(
            self.dropout(self.embeddings(input_ids)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, final = self.gru(packed)
        if self.pooling == "last":
            directions = 2 if self.gru.bidirectional else 1
            pooled = final[-directions:].transpose(0, 1).reshape(batch, -1)
        else:
            states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=width)
            real = (positions < lengths[:, None])[..., None]
            if self.pooling == "max":
                pooled = states.masked_fill(~real, torch.finfo(states.dtype).min).amax(1)
            else:
                pooled = states.sum(1) / lengths[:, None].to(states.dtype)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
