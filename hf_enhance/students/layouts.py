"""Where the MLP neurons and attention heads sit inside one block of each architecture, for width pruning.

Depth pruning needs no table: any model with one stack of repeated blocks (`hf_enhance.modeling.repeated_blocks`)
and ``config.num_hidden_layers`` can lose layers. Width pruning must know which weights carry the MLP neurons and
the attention heads; this module maps ``config.model_type`` to that, as PEFT maps model types to target modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BLOCK_LAYOUTS", "BlockLayout", "block_layout", "register_student_layout"]


@dataclass(frozen=True)
class BlockLayout:
    """The module names, relative to one block, that carry the prunable widths.

    Example (Llama): ``BlockLayout(mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
    query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", output="self_attn.o_proj")``.
    """

    mlp_in: tuple[str, ...] = field(
        metadata={"help": "Modules whose outputs are the MLP neurons (gate and up projections)."}
    )
    mlp_out: str = field(metadata={"help": "Module whose input is the MLP neurons (the down projection)."})
    mlp_in_fused: int = field(
        default=1,
        metadata={"help": "Neuron groups stacked along each mlp_in output (Phi-3's gate_up_proj: 2)."},
    )
    query: str | None = field(default=None, metadata={"help": "Query projection (heads on its output)."})
    key: str | None = field(
        default=None, metadata={"help": "Key projection (key/value groups on its output)."}
    )
    value: str | None = field(default=None, metadata={"help": "Value projection."})
    qkv: str | None = field(
        default=None, metadata={"help": "Fused query|key|value projection, instead of the three (Phi-3)."}
    )
    output: str | None = field(
        default=None, metadata={"help": "Attention output projection (heads on its input)."}
    )
    intermediate_attr: str = field(
        default="intermediate_size", metadata={"help": "Config attribute holding the MLP width."}
    )

    def __post_init__(self) -> None:
        if not self.mlp_in or self.mlp_in_fused < 1:
            raise ValueError("BlockLayout needs at least one mlp_in module and mlp_in_fused >= 1.")
        separate = (self.query, self.key, self.value)
        if self.qkv is not None and any(name is not None for name in separate):
            raise ValueError("BlockLayout: give either qkv (fused) or query/key/value, not both.")
        if self.qkv is None and any(name is not None for name in separate) and None in separate:
            raise ValueError("BlockLayout: query, key and value go together; one of them is missing.")
        if (self.output is None) != (self.qkv is None and self.query is None):
            raise ValueError("BlockLayout: the attention output projection goes with query/key/value or qkv.")

    @property
    def prunes_heads(self) -> bool:
        """Whether heads (and with them an explicit ``head_dim``, hence the hidden size) can be pruned."""
        return self.output is not None

    def attention_modules(self) -> tuple[str, ...]:
        return tuple(name for name in (self.query, self.key, self.value, self.qkv, self.output) if name)


_LLAMA_LIKE = BlockLayout(
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    output="self_attn.o_proj",
)
_BERT_LIKE = BlockLayout(mlp_in=("intermediate.dense",), mlp_out="output.dense")

# config.model_type -> layout. GPT-2 and BERT compute the head size as hidden_size / heads, so only their MLP
# width is prunable; the Llama family reads an explicit head_dim, so heads and the hidden size are too.
BLOCK_LAYOUTS: dict[str, BlockLayout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "phi3": BlockLayout(
        mlp_in=("mlp.gate_up_proj",),
        mlp_in_fused=2,
        mlp_out="mlp.down_proj",
        qkv="self_attn.qkv_proj",
        output="self_attn.o_proj",
    ),
    "gpt2": BlockLayout(mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj", intermediate_attr="n_inner"),
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
}


def register_student_layout(model_type: str, layout: BlockLayout) -> None:
    """Teach width pruning a new architecture (``config.model_type``); replaces an existing entry."""
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a BlockLayout, got {type(layout).__name__}.")
    BLOCK_LAYOUTS[model_type] = layout


def block_layout(model_type: str | None, what: str) -> BlockLayout:
    """The layout of ``model_type``, or an error that names it and says how to register one."""
    layout = BLOCK_LAYOUTS.get(model_type or "")
    if layout is None:
        raise ValueError(
            f"{what} needs to know where the MLP neurons and attention heads of a {model_type!r} block are, and "
            f"that architecture has no entry (known: {', '.join(sorted(BLOCK_LAYOUTS))}). Register one with "
            "hf_enhance.students.register_student_layout(model_type, BlockLayout(mlp_in=(...), mlp_out=..., "
            "query=..., key=..., value=..., output=...)), module names relative to one block of "
            "hf_enhance.modeling.repeated_blocks(model); depth pruning (layers=/num_layers=) needs no entry."
        )
    return layout
