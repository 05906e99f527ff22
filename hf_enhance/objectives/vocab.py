"""Row-wise operations over the vocabulary, for one process holding all of it or for a vocabulary-parallel group.

The fused objective (`fused.py`) only needs a handful of operations that span a whole row of logits: the
log-softmax normaliser, sums over the vocabulary, and reading the entry at a label. `Vocabulary` does them on
the full row. `ShardedVocabulary` does them when each process of a group holds a contiguous slice of the
columns (rank r holds columns ``[start_r, start_r + size_r)``, in rank order: FSDP2's dim-0 sharding of an
LM head): the max and the sum of exponentials are combined with all-reduce (Megatron-LM's vocabulary-parallel
cross-entropy does the same), so every result equals the single-process one up to float summation order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class Vocabulary:
    """The whole vocabulary in this process: plain torch ops, no communication."""

    start = 0

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1)

    def logsumexp(self, logits: torch.Tensor) -> torch.Tensor:
        """``[rows, 1]`` log of the summed exponentials of each row."""
        return torch.logsumexp(logits, dim=-1, keepdim=True)

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Row sums computed over the local columns, completed over the vocabulary (here: already complete)."""
        return partial

    def at(self, values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[rows, 1]`` entries of ``values`` at the global column ids ``labels`` (``[rows, 1]``)."""
        return values.gather(1, labels)

    def one_hot_add(self, values: torch.Tensor, labels: torch.Tensor, value: float) -> torch.Tensor:
        """Add ``value`` at each row's label column, in place."""
        return values.scatter_add_(1, labels, torch.full_like(values[:, :1], value))

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """This process's rows and where they sit among all processes' rows (here: all of them)."""
        return rows, slice(0, rows.shape[0])

    def sum_rows(self, rows: torch.Tensor, own: slice) -> torch.Tensor:
        """The sum over processes of a ``[all rows, ...]`` tensor, restricted to this process's rows."""
        return rows[own]


class ShardedVocabulary(Vocabulary):
    """Columns ``[start, start + size)`` of the vocabulary here; the rest on the other ranks of ``group``.

    Every rank computes the objective for the tokens of all ranks (`gather_rows`) on its own columns: the head
    weights never leave their rank, only ``[tokens, hidden]`` states and per-token statistics travel.
    """

    def __init__(self, start: int, group: dist.ProcessGroup | None = None) -> None:
        self.start = start
        self.group = group

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def logsumexp(self, logits: torch.Tensor) -> torch.Tensor:
        top = (
            logits.amax(dim=-1, keepdim=True)
            if logits.shape[-1]
            else logits.new_full((logits.shape[0], 1), float("-inf"))
        )
        top = self._all_reduce(top, dist.ReduceOp.MAX)
        # A row whose every logit is -inf has no finite max; shift by 0 there so exp() stays 0, not NaN.
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = self._all_reduce((logits - top).exp_().sum(dim=-1, keepdim=True), dist.ReduceOp.SUM)
        return total.log_().add_(top)

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - self.logsumexp(logits)

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(partial, dist.ReduceOp.SUM)

    def at(self, values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        local, here = self._local(labels, values.shape[1])
        picked = values.gather(1, local) if values.shape[1] else torch.zeros_like(labels, dtype=values.dtype)
        return self.sum(torch.where(here, picked, torch.zeros_like(picked)))

    def one_hot_add(self, values: torch.Tensor, labels: torch.Tensor, value: float) -> torch.Tensor:
        local, here = self._local(labels, values.shape[1])
        if values.shape[1]:
            values.scatter_add_(1, local, here.to(values.dtype) * value)
        return values

    def _local(self, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Label ids as local column ids (clamped into range) and whether this rank holds them."""
        local = labels - self.start
        here = (local >= 0) & (local < size)
        return local.clamp(0, max(size - 1, 0)), here

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, slice]:
        world = dist.get_world_size(self.group)
        count = torch.tensor([rows.shape[0]], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=self.group)
        sizes = [int(c) for c in counts]
        longest = max(sizes)
        padded = rows.new_zeros((longest, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        rank = dist.get_rank(self.group)
        offset = sum(sizes[:rank])
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]), slice(
            offset, offset + rows.shape[0]
        )

    def sum_rows(self, rows: torch.Tensor, own: slice) -> torch.Tensor:
        return self.sum(rows)[own]
