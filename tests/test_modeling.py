"""Model-structure utilities: meta skeletons, linear layers, stacks, sites and heads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, BertForMaskedLM, T5ForConditionalGeneration

from hf_enhance.modeling import head_module_names, linear_modules, meta_model, module_sites, repeated_blocks

TINY_T5 = dict(num_layers=3, num_decoder_layers=2, d_model=16, d_kv=4, num_heads=4, d_ff=32, vocab_size=32)
TINY_BERT = dict(
    num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32, vocab_size=32
)


def test_meta_model_allocates_nothing_and_picks_a_class() -> None:
    config = AutoConfig.for_model("llama")  # a 7B config: only possible without weights
    model = meta_model(config)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert type(meta_model(AutoConfig.for_model("t5", **TINY_T5))) is T5ForConditionalGeneration
    assert type(meta_model(AutoConfig.for_model("bert", **TINY_BERT))) is BertForMaskedLM
    classifier = meta_model(AutoConfig.for_model("bert", **TINY_BERT), "SEQ_CLS")
    assert type(classifier).__name__ == "BertForSequenceClassification"
    named = AutoConfig.for_model("bert", architectures=["BertForTokenClassification"], **TINY_BERT)
    assert type(meta_model(named)).__name__ == "BertForTokenClassification"


def test_meta_model_returns_models_unchanged_and_rejects_other_things() -> None:
    module = torch.nn.Linear(2, 2)
    assert meta_model(module) is module
    with pytest.raises(TypeError, match=r"Expected a torch\.nn\.Module"):
        meta_model(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown task 'LM'.*CAUSAL_LM"):
        meta_model(AutoConfig.for_model("llama"), "LM")


def test_stacks_and_sites_of_an_encoder_decoder() -> None:
    model = meta_model(AutoConfig.for_model("t5", **TINY_T5))
    stacks = repeated_blocks(model)
    assert {name: len(stack) for name, stack in stacks.items()} == {"encoder.block": 3, "decoder.block": 2}
    sites = module_sites(model)
    assert set(sites) == set(linear_modules(model))
    q = sites["decoder.block.1.layer.1.EncDecAttention.q"]
    assert (q.stack, q.layer_index, q.num_layers, q.relative_name) == (
        "decoder.block",
        1,
        2,
        "layer.1.EncDecAttention.q",
    )
    assert (q.in_features, q.out_features, q.cost_per_rank) == (16, 16, 32)
    head = sites["lm_head"]
    assert head.stack is None and head.layer_index is None and head.num_layers == 3


def test_conv1d_shapes_and_expert_parameters() -> None:
    gpt2 = meta_model(AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=4, vocab_size=32))
    c_fc = module_sites(gpt2)["transformer.h.0.mlp.c_fc"]
    assert (c_fc.in_features, c_fc.out_features) == (16, 64)
    mixtral = meta_model(
        AutoConfig.for_model(
            "mixtral",
            num_hidden_layers=1,
            hidden_size=16,
            intermediate_size=24,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=3,
            vocab_size=32,
        )
    )
    experts = module_sites(mixtral)["model.layers.0.mlp.experts.down_proj"]
    assert experts.kind == "parameter" and experts.layer_index == 0
    assert experts.cost_per_rank == 3 * (24 + 16)


def test_heads() -> None:
    bert = AutoConfig.for_model("bert", **TINY_BERT)
    assert head_module_names(meta_model(bert)) == (["cls"], True)
    assert head_module_names(meta_model(bert, "SEQ_CLS")) == (["classifier"], False)
    t5 = meta_model(AutoConfig.for_model("t5", **TINY_T5))
    assert head_module_names(t5) == (["lm_head"], True)
    assert head_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2))) == ([], False)
