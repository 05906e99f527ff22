"""Tiny teachers (4 layers, hidden 32) of every architecture `student_from_teacher` must handle."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 64
_DECODER = dict(
    num_hidden_layers=4,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    pad_token_id=0,
)
_GQA = dict(_DECODER, num_key_value_heads=2, head_dim=8)
_SLIDING = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)

CONFIGS: dict[str, PretrainedConfig] = {
    "gpt2": GPT2Config(
        n_layer=4,
        n_embd=32,
        n_head=4,
        n_inner=48,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama": LlamaConfig(**_GQA, tie_word_embeddings=True),
    "qwen2": Qwen2Config(**_GQA, use_sliding_window=True, **_SLIDING),
    "qwen3": Qwen3Config(**_GQA),
    "mistral": MistralConfig(**_GQA),
    "gemma": GemmaConfig(**_GQA),
    "gemma2": Gemma2Config(**_GQA, **_SLIDING),
    "gemma3_text": Gemma3TextConfig(**_GQA, **_SLIDING),
    "phi3": Phi3Config(**_DECODER, num_key_value_heads=2, bos_token_id=1, eos_token_id=2),
    "bert": BertConfig(**_DECODER, num_labels=3),
    "roberta": RobertaConfig(**dict(_DECODER, pad_token_id=1), num_labels=3),
}
CAUSAL = [name for name in CONFIGS if name not in ("bert", "roberta")]
# Architectures whose heads (and hidden size) can be pruned: an explicit head_dim.
HEADS = [name for name in CAUSAL if name != "gpt2"]


def tiny_teacher(name: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised teacher in eval mode, float32, with weights scaled up so layers matter."""
    torch.manual_seed(seed)
    config = CONFIGS[name]
    if name == "bert":
        model = BertForSequenceClassification(config)
    elif name == "roberta":
        model = RobertaForSequenceClassification(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.2)
    return model.eval()


def token_ids(batch: int = 4, length: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)
