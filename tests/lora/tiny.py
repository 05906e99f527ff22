"""Tiny configs (2 layers, hidden 32) for every architecture the LoRA presets cover."""

from __future__ import annotations

import copy
import functools

import torch
from transformers import AutoConfig, PretrainedConfig

from hf_enhance.modeling import meta_model

_DECODER = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=64,
    max_position_embeddings=64,
    pad_token_id=0,
)
_GQA = dict(_DECODER, num_key_value_heads=2, head_dim=8)
_ENCODER = dict(_DECODER, type_vocab_size=2)

TINY: dict[str, dict] = {
    "gpt2": dict(
        n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0
    ),
    "gpt_neox": _DECODER,
    "gpt_neo": dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
    ),
    "opt": dict(_DECODER, ffn_dim=64, word_embed_proj_dim=32, pad_token_id=1),
    "llama": _GQA,
    "mistral": _GQA,
    "mixtral": dict(_GQA, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": _GQA,
    "qwen3": _GQA,
    "gemma": _GQA,
    "gemma2": _GQA,
    "phi": _DECODER,
    "phi3": dict(_DECODER, bos_token_id=1, eos_token_id=2),
    "falcon": dict(_DECODER, new_decoder_architecture=False),
    "bert": _ENCODER,
    "roberta": dict(_ENCODER, pad_token_id=1),
    "electra": dict(_ENCODER, embedding_size=16),
    "distilbert": dict(
        n_layers=2, dim=32, n_heads=4, hidden_dim=64, vocab_size=64, max_position_embeddings=64
    ),
    "t5": dict(
        num_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=64, vocab_size=64, decoder_start_token_id=0
    ),
    "bart": dict(
        encoder_layers=2,
        decoder_layers=2,
        d_model=32,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=64,
        max_position_embeddings=64,
    ),
}
ARCHS = sorted(TINY)


def tiny_config(model_type: str, **overrides) -> PretrainedConfig:
    return AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})


@functools.cache
def _cached(model_type: str, task: str | None, seed: int) -> torch.nn.Module:
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    return type(meta_model(config, task))(config).eval()


def tiny_model(model_type: str, task: str | None = None, seed: int = 0) -> torch.nn.Module:
    """A fresh copy of a randomly initialised fp32 tiny model (same weights for the same seed), in eval mode."""
    return copy.deepcopy(_cached(model_type, task, seed))


def inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A fixed batch the model accepts (decoder ids for encoder-decoders)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 60, (2, 7), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        batch["decoder_input_ids"] = ids[:, :5]
    return batch


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(model)).logits
