"""A causal LM's final hidden states and head, without computing its ``[tokens, vocab]`` logits (any placement).

The fused objective (`fused_distillation_loss`) needs what the LM head consumes plus the head's weight. Running
the model with its output embeddings swapped for `nn.Identity` returns exactly that through the model's own
forward (so DDP, PEFT and accelerate wrappers still see a normal forward), and never allocates the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from hf_enhance.modeling import logits_of, unwrap

# Config attributes that mean the model transforms hidden @ W.T before returning logits.
_LOGIT_POSTPROCESSING = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)


def plain_lm_head(model: nn.Module) -> nn.Linear | None:
    """The model's LM head when logits are exactly ``hidden @ head.weight.T + head.bias``; None otherwise."""
    base = unwrap(model)
    if not isinstance(base, PreTrainedModel):
        return None
    config = base.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING):
        return None
    head = base.get_output_embeddings()
    # FSDP2 gives a module it shards on its own a subclass of (FSDPModule, its class): FSDPLinear is still a plain head.
    cls = type(head).__bases__[1] if isinstance(head, FSDPModule) else type(head)
    return head if cls is nn.Linear else None


@contextmanager
def head_bypassed(model: nn.Module) -> Iterator[nn.Linear]:
    """Within the block, ``model(**inputs)`` returns final hidden states in place of logits. Yields the head."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    base.set_output_embeddings(nn.Identity())
    try:
        yield head
    finally:
        base.set_output_embeddings(head)


def gathered(module: nn.Module, recurse: bool = False) -> AbstractContextManager[Any]:
    """Within the block, ``module``'s own ZeRO-3 partitioned parameters (its submodules' too with ``recurse``) are
    whole (read-only); a no-op for parameters ZeRO-3 does not partition."""
    parameters = [p for p in module.parameters(recurse=recurse) if hasattr(p, "ds_id")]
    if not parameters:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters)


def hidden_states_match_logits(
    model: nn.Module, base: nn.Module, inputs: dict[str, Any], mixed_precision: bool = False
) -> bool:
    """Check once, on the first row in eval mode, that ``head(hidden)`` reproduces the model's real logits.

    `model` is what gets called (possibly DDP-wrapped), `base` the unwrapped model whose head is bypassed.
    `mixed_precision`: the model's forward runs under bf16/fp16 autocast (accelerate wraps it), so its logits
    carry half-precision rounding even when they come back as float32; compare at half-precision tolerance.
    """
    batch = next(v.shape[0] for v in inputs.values() if torch.is_tensor(v) and v.dim() > 0)
    row = {
        k: v[:1] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch else v
        for k, v in inputs.items()
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            real = logits_of(model(**row))
            with head_bypassed(base) as head:
                hidden = logits_of(model(**row))
            # A head FSDP2 resharded after the forward, or ZeRO-3 partitioned, is gathered for this one check.
            with gathered(head):
                weight, bias = (
                    t.full_tensor() if isinstance(t, DTensor) else t for t in (head.weight, head.bias)
                )
                rebuilt = F.linear(hidden, weight, bias)
    finally:
        model.train(was_training)
    low_precision = mixed_precision or real.dtype in (torch.float16, torch.bfloat16)
    tolerance = 2e-2 if low_precision else 1e-4
    return rebuilt.shape == real.shape and torch.allclose(
        rebuilt.float(), real.float(), rtol=tolerance, atol=tolerance
    )
