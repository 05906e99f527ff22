"""Preset resolution: every preset on every architecture, the fallback, registration and errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from hf_enhance.lora import (
    architecture_roles,
    list_lora_presets,
    lora_config,
    lora_targets,
    register_lora_architecture,
    register_lora_preset,
)
from hf_enhance.lora import targets as targets_module
from hf_enhance.modeling import linear_modules, meta_model
from tests.lora.tiny import ARCHS, tiny_config, tiny_model

PRESETS = ["attention-qv", "attention", "mlp", "attention-mlp", "all-linear"]


@pytest.fixture
def restore_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets_module, "_PRESETS", dict(targets_module._PRESETS))
    monkeypatch.setattr(targets_module, "_ARCHITECTURES", dict(targets_module._ARCHITECTURES))


def _lora_layer_names(peft_model: torch.nn.Module) -> set[str]:
    """Names PEFT wrapped, relative to the base model (expert-parameter wrappers named by parameter)."""
    names = set()
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            name = name.replace(".base_layer", "")
            parameter = getattr(module, "parameter_name", None)
            names.add(f"{name}.{parameter}" if parameter else name)
    return names


@pytest.mark.parametrize("arch", ARCHS)
def test_every_preset_resolves_and_peft_wraps_exactly_those_modules(arch: str) -> None:
    config = tiny_config(arch)
    skeleton = meta_model(config)
    hits = {preset: set(lora_targets(config, preset)) for preset in PRESETS}
    assert all(hits.values())
    assert hits["attention-qv"] <= hits["attention"] < hits["attention-mlp"] <= hits["all-linear"]
    assert hits["attention"] | hits["mlp"] == hits["attention-mlp"]
    assert not hits["attention"] & hits["mlp"]
    output = skeleton.get_output_embeddings()
    lm_head = next(name for name, module in skeleton.named_modules() if module is output)
    assert not any(name == lm_head or name.startswith(f"{lm_head}.") for name in hits["all-linear"])
    for preset in PRESETS:
        model = tiny_model(arch)
        wrapped = _lora_layer_names(get_peft_model(model, lora_config(config, preset)))
        assert wrapped == hits[preset], preset


@pytest.mark.parametrize("arch", ARCHS)
def test_fallback_inference_agrees_with_the_role_table(arch: str, restore_registries: None) -> None:
    skeleton = meta_model(tiny_config(arch))
    from_table = architecture_roles(skeleton)
    del targets_module._ARCHITECTURES[arch]
    assert architecture_roles(skeleton) == from_table


@pytest.mark.parametrize(
    ("arch", "preset", "expected"),
    [
        ("gpt2", "attention-qv", {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}),
        ("phi3", "attention-qv", {"model.layers.0.self_attn.qkv_proj", "model.layers.1.self_attn.qkv_proj"}),
        (
            "bert",
            "mlp",
            {f"bert.encoder.layer.{i}.{m}" for i in (0, 1) for m in ("intermediate.dense", "output.dense")},
        ),
        (
            "mixtral",
            "mlp",
            {f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("gate_up_proj", "down_proj")},
        ),
        ("electra", "all-linear", None),
    ],
)
def test_specific_targets(arch: str, preset: str, expected: set[str] | None) -> None:
    hits = set(lora_targets(tiny_config(arch), preset))
    if expected is not None:
        assert hits == expected
    else:  # electra: the embedding projection is a linear layer of the base model; the generator head is not
        assert "electra.embeddings_project" in hits
        assert not any(name.startswith("generator_") for name in hits)


def test_gpt2_conv1d_sets_fan_in_fan_out() -> None:
    assert lora_config(tiny_config("gpt2")).fan_in_fan_out is True
    assert lora_config(tiny_config("llama")).fan_in_fan_out is False


def test_target_modules_are_short_and_exact() -> None:
    config = lora_config(tiny_config("llama"), "attention")
    assert config.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert config.exclude_modules is None
    # BERT's MLP output is "<layer>.output.dense", its attention output "attention.output.dense": the short
    # form targets "output.dense" and excludes the attention one instead of listing one key per layer.
    bert = lora_config(tiny_config("bert", num_hidden_layers=12), "mlp")
    assert bert.target_modules == {"intermediate.dense", "output.dense"}
    assert bert.exclude_modules == {"attention.output.dense"}
    assert lora_config(tiny_config("bert"), "attention-mlp").exclude_modules is None


@pytest.mark.parametrize(
    ("arch", "heads"),
    [("bert", ["classifier"]), ("llama", ["score"]), ("distilbert", ["pre_classifier", "classifier"])],
)
def test_classification_heads_go_to_modules_to_save(arch: str, heads: list[str]) -> None:
    config = lora_config(tiny_config(arch, num_labels=3), "all-linear", task_type="SEQ_CLS")
    assert sorted(config.modules_to_save) == sorted(heads)
    hits = lora_targets(tiny_config(arch, num_labels=3), "all-linear", task_type="SEQ_CLS")
    assert not any(name.split(".")[0] in heads for name in hits)
    assert lora_config(tiny_config(arch), "all-linear").modules_to_save is None


def test_model_and_config_resolve_the_same() -> None:
    assert lora_targets(tiny_model("qwen2"), "attention-mlp") == lora_targets(
        tiny_config("qwen2"), "attention-mlp"
    )


def test_list_presets_has_builtins_with_descriptions() -> None:
    presets = list_lora_presets()
    assert set(PRESETS) <= set(presets)
    assert all(presets[name] for name in PRESETS)


def test_unknown_preset_lists_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"Unknown LoRA preset 'atention'.*'all-linear'.*'attention-qv'"):
        lora_targets(tiny_config("llama"), "atention")
    with pytest.raises(ValueError, match="Valid presets"):
        lora_config(tiny_config("llama"), "nope")


def test_register_preset_by_patterns(restore_registries: None) -> None:
    register_lora_preset("o-only", {"llama": ["o_proj"], "gpt2": ["attn.c_proj"]}, "output projections")
    assert list_lora_presets()["o-only"] == "output projections"
    assert lora_targets(tiny_config("gpt2"), "o-only") == [
        "transformer.h.0.attn.c_proj",
        "transformer.h.1.attn.c_proj",
    ]
    with pytest.raises(ValueError, match=r"no targets for model_type 'bert'; it covers \['gpt2', 'llama'\]"):
        lora_targets(tiny_config("bert"), "o-only")
    with pytest.raises(ValueError, match="already exists"):
        register_lora_preset("o-only", {"llama": ["o_proj"]})


def test_register_preset_by_callable(restore_registries: None) -> None:
    register_lora_preset(
        "last-layer-q", lambda model: [n for n in linear_modules(model) if "layers.1.self_attn.q" in n]
    )
    assert lora_targets(tiny_config("llama"), "last-layer-q") == ["model.layers.1.self_attn.q_proj"]
    register_lora_preset("bogus", lambda model: ["model.layers.0.input_layernorm"])
    with pytest.raises(ValueError, match="not linear modules or expert weights"):
        lora_targets(tiny_config("llama"), "bogus")


def test_pattern_matching_nothing_is_an_error(restore_registries: None) -> None:
    register_lora_preset("typo", {"llama": ["q_prj"]})
    with pytest.raises(ValueError, match=r"'q_prj'.*matches no linear module.*self_attn.q_proj"):
        lora_targets(tiny_config("llama"), "typo")


def test_bad_registrations_are_rejected() -> None:
    with pytest.raises(TypeError, match="non-empty mapping"):
        register_lora_preset("x", ["q_proj"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty list"):
        register_lora_preset("x", {"llama": "q_proj"})
    with pytest.raises(ValueError, match="Unknown roles"):
        register_lora_architecture("x", {"queries": ["q"]})


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(8, 8)


class _Odd(torch.nn.Module):
    def __init__(self, model_type: str | None = "odd") -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type)
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])


def test_fallback_failure_lists_linear_modules_and_how_to_register(restore_registries: None) -> None:
    with pytest.raises(
        ValueError, match=r"inference failed.*blocks\.<i>\.mix.*register_lora_architecture\('odd'"
    ):
        lora_targets(_Odd(), "attention")
    with pytest.raises(ValueError, match=r"no config.model_type.*lambda model"):
        lora_targets(_Odd(model_type=None), "attention")
    register_lora_architecture("odd", {"query": ["mix"]})
    assert lora_targets(_Odd(), "attention-qv") == ["blocks.0.mix", "blocks.1.mix"]
    assert lora_targets(_Odd(), "all-linear") == ["blocks.0.mix", "blocks.1.mix"]


def test_outdated_role_table_is_reported(restore_registries: None) -> None:
    register_lora_architecture("llama", {"query": ["wq"], "value": ["v_proj"]}, overwrite=True)
    with pytest.raises(ValueError, match=r"names modules this model does not have \(roles \['query'\]\)"):
        lora_targets(tiny_config("llama"), "attention")


def test_peft_model_is_rejected() -> None:
    peft_model = get_peft_model(tiny_model("llama"), lora_config(tiny_config("llama")))
    with pytest.raises(TypeError, match="Got a PEFT model"):
        lora_targets(peft_model)


def test_unknown_task_lists_tasks() -> None:
    with pytest.raises(ValueError, match=r"Unknown task 'CLS'.*SEQ_CLS"):
        lora_targets(tiny_config("bert"), task_type="CLS")
