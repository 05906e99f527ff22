"""``prefix_tuning_config``: PEFT prefix tuning sized by a parameter budget, resolved without weights.

What it adds over ``peft.PrefixTuningConfig``: the layer/dimension fields PEFT would infer at
``get_peft_model`` time are filled in up front (from a config alone, on the meta device), and
``budget=`` picks ``num_virtual_tokens`` so prefix tuning can be compared with LoRA at equal parameter count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peft import PrefixTuningConfig, get_peft_model
from transformers import PretrainedConfig

from hf_enhance.modeling import ModelOrConfig, meta_model

__all__ = ["prefix_tuning_config"]


def _resolve(skeleton_config: PretrainedConfig, config: PrefixTuningConfig, task: str) -> tuple[int, Any]:
    """PEFT's own resolution of ``config`` on a fresh meta skeleton: trainable parameters, filled config."""
    peft_model = get_peft_model(meta_model(skeleton_config, task), dataclasses.replace(config))
    return peft_model.get_nb_trainable_parameters()[0], peft_model.peft_config["default"]


def prefix_tuning_config(
    model: ModelOrConfig,
    num_virtual_tokens: int | None = None,
    *,
    budget: int | None = None,
    **prefix_kwargs: Any,
) -> PrefixTuningConfig:
    """A ``PrefixTuningConfig`` with ``num_layers``, ``token_dim``, ``num_attention_heads`` and
    ``num_transformer_submodules`` resolved for ``model``.

    Args:
        model: a model, a config or a path to one.
        num_virtual_tokens: prefix length. Give this or ``budget``.
        budget: trainable-parameter budget; the prefix gets the most virtual tokens that fit.
        **prefix_kwargs: other ``PrefixTuningConfig`` fields. ``task_type`` defaults to ``SEQ_2_SEQ_LM`` for
            encoder-decoders and ``CAUSAL_LM`` otherwise.
    """
    if (num_virtual_tokens is None) == (budget is None):
        raise ValueError(
            "Pass exactly one of num_virtual_tokens (prefix length) or budget (parameter count)."
        )
    for label, value in (("num_virtual_tokens", num_virtual_tokens), ("budget", budget)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{label} must be a positive int, got {value!r}.")
    skeleton = meta_model(model, prefix_kwargs.get("task_type"))
    config = getattr(skeleton, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise TypeError("prefix tuning needs a transformers model (with .config) or a config.")
    task = prefix_kwargs.pop("task_type", None) or (
        "SEQ_2_SEQ_LM" if getattr(config, "is_encoder_decoder", False) else "CAUSAL_LM"
    )
    probe = PrefixTuningConfig(task_type=task, num_virtual_tokens=1, **prefix_kwargs)
    one, resolved = _resolve(config, probe, task)
    if budget is not None:
        per_token = _resolve(config, dataclasses.replace(probe, num_virtual_tokens=2), task)[0] - one
        num_virtual_tokens = (budget - (one - per_token)) // per_token
        if num_virtual_tokens < 1:
            raise ValueError(
                f"Budget {budget} is below one virtual token ({one} parameters) for this model. "
                "Raise the budget or use LoRA/IA3."
            )
    return dataclasses.replace(resolved, num_virtual_tokens=num_virtual_tokens)
