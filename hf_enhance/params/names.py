"""The names the ``hf-enhance`` command offers, in a module that imports nothing heavy: ``--help`` and argument
errors answer without loading torch, transformers or peft. Tests hold each to the registry it mirrors."""

from __future__ import annotations

__all__ = ["DEFAULT_TOP_K", "LORA_PRESET_NAMES", "METHODS", "MODEL_NAMES"]

METHODS: dict[str, str] = {
    "lora": "LoRA (peft.LoraConfig): low-rank A, B next to the targeted linear layers",
    "ia3": "IA3 (peft.IA3Config): one learned scaling vector per targeted layer",
    "prefix": "prefix tuning (peft.PrefixTuningConfig): learned key/value prefixes in every layer",
    "full": "full fine-tuning: every parameter trained, no PEFT",
}
"""Fine-tuning method -> what it trains (`count_parameters`' ``method``)."""

MODEL_NAMES: tuple[str, ...] = (
    "distilgpt2", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "bert-base", "roberta-base", "t5-base",
    "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "llama-2-7b", "llama-2-13b",
    "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b",
)  # fmt: skip
"""The names of `hf_enhance.params.MODEL_ZOO`, in its order."""

LORA_PRESET_NAMES: tuple[str, ...] = ("attention-qv", "attention", "mlp", "attention-mlp", "all-linear")
"""The built-in LoRA presets (`hf_enhance.lora.presets.BUILTIN_PRESETS`)."""

DEFAULT_TOP_K = 32
"""Teacher ids per token of the offline teacher cache that `plan_distillation_memory` prices by default."""
