"""Tables: which modules play which role in each architecture, and which roles each preset targets.

Patterns are PEFT ``alpha_pattern``-style regular expressions matched against the end of a full module (or
parameter) name at a dot boundary: ``q_proj`` matches ``model.layers.3.self_attn.q_proj`` in every layer,
``attn.c_proj`` matches GPT-2's attention output but not its MLP ``mlp.c_proj``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = ["ARCHITECTURE_ROLES", "BUILTIN_PRESETS", "ROLES", "LoraPreset"]

# query/key/value: separate projections; qkv: one fused projection; attn_out: attention output projection;
# mlp_in: up/gate projections (or fused gate_up); mlp_out: down projection.
ROLES: tuple[str, ...] = ("query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out")

_LLAMA_LIKE: dict[str, tuple[str, ...]] = {
    "query": ("self_attn.q_proj",),
    "key": ("self_attn.k_proj",),
    "value": ("self_attn.v_proj",),
    "attn_out": ("self_attn.o_proj",),
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp_out": ("mlp.down_proj",),
}
_BERT_LIKE: dict[str, tuple[str, ...]] = {
    "query": ("attention.self.query",),
    "key": ("attention.self.key",),
    "value": ("attention.self.value",),
    "attn_out": ("attention.output.dense",),
    "mlp_in": ("intermediate.dense",),
    "mlp_out": (r"layer\.\d+\.output\.dense",),
}
_NEOX_LIKE: dict[str, tuple[str, ...]] = {
    "qkv": ("query_key_value",),
    "attn_out": ("attention.dense", "self_attention.dense"),
    "mlp_in": ("mlp.dense_h_to_4h",),
    "mlp_out": ("mlp.dense_4h_to_h",),
}
_OPT_LIKE: dict[str, tuple[str, ...]] = {
    "query": ("q_proj",),
    "key": ("k_proj",),
    "value": ("v_proj",),
    "attn_out": ("out_proj",),
    "mlp_in": ("fc1",),
    "mlp_out": ("fc2",),
}

ARCHITECTURE_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {
        "qkv": ("attn.c_attn",),
        "attn_out": ("attn.c_proj",),
        "mlp_in": ("mlp.c_fc",),
        "mlp_out": ("mlp.c_proj",),
    },
    "gpt_neox": _NEOX_LIKE,
    "falcon": _NEOX_LIKE,
    "gpt_neo": {
        "query": ("attention.q_proj",),
        "key": ("attention.k_proj",),
        "value": ("attention.v_proj",),
        "attn_out": ("attention.out_proj",),
        "mlp_in": ("mlp.c_fc",),
        "mlp_out": ("mlp.c_proj",),
    },
    "opt": _OPT_LIKE,
    "bart": _OPT_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "mixtral": {
        **{role: _LLAMA_LIKE[role] for role in ("query", "key", "value", "attn_out")},
        "mlp_in": ("mlp.experts.gate_up_proj",),
        "mlp_out": ("mlp.experts.down_proj",),
    },
    "phi": {
        **{role: _LLAMA_LIKE[role] for role in ("query", "key", "value")},
        "attn_out": ("self_attn.dense",),
        "mlp_in": ("mlp.fc1",),
        "mlp_out": ("mlp.fc2",),
    },
    "phi3": {
        "qkv": ("self_attn.qkv_proj",),
        "attn_out": ("self_attn.o_proj",),
        "mlp_in": ("mlp.gate_up_proj",),
        "mlp_out": ("mlp.down_proj",),
    },
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": {
        "query": ("attention.q_lin",),
        "key": ("attention.k_lin",),
        "value": ("attention.v_lin",),
        "attn_out": ("attention.out_lin",),
        "mlp_in": ("ffn.lin1",),
        "mlp_out": ("ffn.lin2",),
    },
    "t5": {
        "query": ("SelfAttention.q", "EncDecAttention.q"),
        "key": ("SelfAttention.k", "EncDecAttention.k"),
        "value": ("SelfAttention.v", "EncDecAttention.v"),
        "attn_out": ("SelfAttention.o", "EncDecAttention.o"),
        "mlp_in": ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1"),
        "mlp_out": ("DenseReluDense.wo",),
    },
}

Targets = Mapping[str, Sequence[str]] | Callable[[nn.Module], Iterable[str]]


@dataclass(frozen=True)
class LoraPreset:
    """A named choice of where LoRA goes.

    Built-in presets name ``roles`` (resolved through ``ARCHITECTURE_ROLES`` or, for unlisted architectures,
    inferred from module names and the block structure). Registered presets give ``targets``: a mapping
    from ``model_type`` to patterns, or a callable ``(model) -> module names``.
    """

    name: str
    description: str = field(metadata={"help": "One line shown by list_lora_presets()."})
    roles: tuple[str, ...] = field(default=(), metadata={"help": "Roles from ROLES this preset targets."})
    all_linear: bool = field(default=False, metadata={"help": "Every linear layer but the output heads."})
    targets: Targets | None = field(
        default=None, metadata={"help": "Registered presets: patterns or callable."}
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise ValueError(f"Unknown roles {unknown} in preset {self.name!r}; valid roles: {list(ROLES)}.")
        if sum((bool(self.roles), self.all_linear, self.targets is not None)) != 1:
            raise ValueError(f"Preset {self.name!r} needs exactly one of roles, all_linear or targets.")


_ATTENTION = ("query", "key", "value", "qkv", "attn_out")
_MLP = ("mlp_in", "mlp_out")

BUILTIN_PRESETS: dict[str, LoraPreset] = {
    preset.name: preset
    for preset in (
        LoraPreset(
            "attention-qv",
            "query and value projections (the LoRA paper's choice; fused qkv where q and v are not separate)",
            roles=("query", "value"),
        ),
        LoraPreset(
            "attention", "all attention projections: q, k, v (or fused qkv) and output", roles=_ATTENTION
        ),
        LoraPreset(
            "mlp", "feed-forward projections: up/gate and down (fused MoE experts included)", roles=_MLP
        ),
        LoraPreset("attention-mlp", "attention and feed-forward projections", roles=_ATTENTION + _MLP),
        LoraPreset("all-linear", "every linear layer except the LM head and task heads", all_linear=True),
    )
}
