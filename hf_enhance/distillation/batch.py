"""`DistillationBatch`: one micro-batch split into what the models take and the facts that travel with it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from hf_enhance.distillation.sources.cache_batches import CACHE_BATCH_KEYS
from hf_enhance.distillation.terms.on_policy import ON_POLICY_KEY
from hf_enhance.distillation.terms.prompts import PROMPT_KEYS

__all__ = ["HIDDEN_TOKENS_KEY", "DistillationBatch"]

HIDDEN_TOKENS_KEY = "hidden_state_tokens"
"""Batch key of the hidden-state term's token count over the whole optimizer step, written into each of the
step's micro-batches when Trainer counts the step's tokens (as Trainer passes ``num_items_in_batch``)."""


@dataclass
class DistillationBatch:
    """A micro-batch as `DistillationTrainer.compute_loss` reads it.

    Attributes:
        inputs: what the student and the teacher are called with.
        labels: the labels (None: pure distillation).
        cached: the teacher-cache entries joined to the rows (empty without a cache).
        on_policy: the completions are the student's own samples.
        hidden_tokens: the hidden-state term's token count over the whole step, when Trainer counted it.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor | None
    cached: dict[str, torch.Tensor]
    on_policy: bool
    hidden_tokens: torch.Tensor | None

    @classmethod
    def split(cls, batch: Mapping[str, Any]) -> DistillationBatch:
        """Split a collated batch; the prompt-only columns (for generation) go to no model."""
        inputs = dict(batch)
        on_policy = bool(inputs.pop(ON_POLICY_KEY, False))
        hidden_tokens = inputs.pop(HIDDEN_TOKENS_KEY, None)
        for key in PROMPT_KEYS:
            inputs.pop(key, None)
        labels = inputs.pop("labels", None)
        cached = {name: inputs.pop(name) for name in CACHE_BATCH_KEYS if name in inputs}
        return cls(inputs, labels, cached, on_policy, hidden_tokens)
