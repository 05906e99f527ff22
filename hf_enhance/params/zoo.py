"""Named model configs with published sizes, shared by `count_parameters`, the CLI and the benchmark.

Every entry is written from the values in the model's published `config.json` (hidden size, layers, heads, kv
heads, intermediate size, vocabulary, tying), so a 70B model can be counted without touching the Hugging Face hub.
`parameters` is the parameter count of `architectures[0]` built from those values (tied weights counted once);
the test suite rebuilds every entry and checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    RobertaConfig,
    T5Config,
)

__all__ = ["MODEL_ZOO", "ZooModel", "worked_example", "zoo_config"]


@dataclass(frozen=True)
class ZooModel:
    """One named architecture: its config class, the published config values and its parameter count."""

    name: str = field(metadata={"help": "Short name used by the CLI and the benchmark, e.g. `llama-2-70b`."})
    source: str = field(metadata={"help": "Hub repository whose `config.json` the values were taken from."})
    config_class: type[PretrainedConfig] = field(metadata={"help": "The transformers config class."})
    values: Mapping[str, Any] = field(metadata={"help": "Keyword arguments for `config_class`."})
    parameters: int = field(
        metadata={"help": "Parameters of `values['architectures'][0]`, tied counted once."}
    )

    def config(self) -> PretrainedConfig:
        """A fresh config instance (safe to mutate)."""
        return self.config_class(**self.values)


def _gpt2(name: str, source: str, n_embd: int, n_layer: int, n_head: int, parameters: int) -> ZooModel:
    values = {
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
    }
    return ZooModel(name, source, GPT2Config, values, parameters)


def _decoder(
    name: str,
    source: str,
    config_class: type[PretrainedConfig],
    architecture: str,
    parameters: int,
    **values: Any,
) -> ZooModel:
    return ZooModel(name, source, config_class, {"architectures": [architecture], **values}, parameters)


def _llama(name: str, source: str, parameters: int, **values: Any) -> ZooModel:
    return _decoder(name, source, LlamaConfig, "LlamaForCausalLM", parameters, **values)


def _qwen2(name: str, source: str, parameters: int, **values: Any) -> ZooModel:
    return _decoder(name, source, Qwen2Config, "Qwen2ForCausalLM", parameters, **values)


_ENTRIES: tuple[ZooModel, ...] = (
    _gpt2("distilgpt2", "distilbert/distilgpt2", 768, 6, 12, 81_912_576),
    _gpt2("gpt2", "openai-community/gpt2", 768, 12, 12, 124_439_808),
    _gpt2("gpt2-medium", "openai-community/gpt2-medium", 1024, 24, 16, 354_823_168),
    _gpt2("gpt2-large", "openai-community/gpt2-large", 1280, 36, 20, 774_030_080),
    _gpt2("gpt2-xl", "openai-community/gpt2-xl", 1600, 48, 25, 1_557_611_200),
    ZooModel(
        "bert-base",
        "google-bert/bert-base-uncased",
        BertConfig,
        {
            "architectures": ["BertForMaskedLM"],
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
        },
        109_514_298,
    ),
    ZooModel(
        "roberta-base",
        "FacebookAI/roberta-base",
        RobertaConfig,
        {
            "architectures": ["RobertaForMaskedLM"],
            "vocab_size": 50265,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 514,
            "type_vocab_size": 1,
            "pad_token_id": 1,
        },
        124_697_433,
    ),
    ZooModel(
        "t5-base",
        "google-t5/t5-base",
        T5Config,
        {
            "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": 32128,
            "d_model": 768,
            "d_kv": 64,
            "d_ff": 3072,
            "num_layers": 12,
            "num_decoder_layers": 12,
            "num_heads": 12,
            "relative_attention_num_buckets": 32,
        },
        222_903_552,
    ),
    _llama(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M",
        134_515_008,
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    ),
    _llama(
        "smollm2-360m",
        "HuggingFaceTB/SmolLM2-360M",
        361_821_120,
        vocab_size=49152,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    ),
    _qwen2(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B",
        494_032_768,
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    _qwen2(
        "qwen2.5-1.5b",
        "Qwen/Qwen2.5-1.5B",
        1_543_714_304,
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    _qwen2(
        "qwen2.5-7b",
        "Qwen/Qwen2.5-7B",
        7_615_616_512,
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    _llama(
        "llama-2-7b",
        "meta-llama/Llama-2-7b-hf",
        6_738_415_616,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    _llama(
        "llama-2-13b",
        "meta-llama/Llama-2-13b-hf",
        13_015_864_320,
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    _llama(
        "llama-2-70b",
        "meta-llama/Llama-2-70b-hf",
        68_976_648_192,
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    _llama(
        "llama-3-8b",
        "meta-llama/Meta-Llama-3-8B",
        8_030_261_248,
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    _llama(
        "llama-3-70b",
        "meta-llama/Meta-Llama-3-70B",
        70_553_706_496,
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    _decoder(
        "mistral-7b",
        "mistralai/Mistral-7B-v0.1",
        MistralConfig,
        "MistralForCausalLM",
        7_241_732_096,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        sliding_window=4096,
        rms_norm_eps=1e-5,
    ),
)

MODEL_ZOO: dict[str, ZooModel] = {entry.name: entry for entry in _ENTRIES}


def zoo_config(name: str) -> PretrainedConfig:
    """The config of a named zoo model, e.g. `zoo_config("llama-2-70b")`."""
    if name not in MODEL_ZOO:
        raise KeyError(
            f"Unknown model name {name!r}: it is not in hf_enhance.params.MODEL_ZOO. "
            f"Valid names: {', '.join(MODEL_ZOO)}. For another model pass its config "
            "(`AutoConfig.from_pretrained(...)`) or a path to its config.json instead."
        )
    return MODEL_ZOO[name].config()


def worked_example() -> nn.Module:
    """LoRA's textbook example on the meta device: one 1000 -> 6000 linear layer named ``layer``.

    Its 6,000,000 weights against ``r * (1000 + 6000)`` LoRA parameters: 14,000 at ``r=2``
    (``count_parameters(worked_example(), target_modules=["layer"], r=2)``).
    """
    with torch.device("meta"):
        return nn.ModuleDict({"layer": nn.Linear(1000, 6000, bias=False)})
