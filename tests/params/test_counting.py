"""count_parameters equals PEFT's own count on real (tiny, instantiated) models, and never touches them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from peft import IA3Config, LoHaConfig, LoraConfig, PrefixTuningConfig, get_peft_model
from torch import nn
from transformers import GPT2Config

from hf_enhance import count_parameters
from hf_enhance.lora import RankSchedule, list_lora_presets, lora_config
from hf_enhance.params.zoo import worked_example, zoo_config
from tests.lora.tiny import ARCHS, tiny_config, tiny_model

PRESETS = sorted(list_lora_presets())


def peft_count(model: nn.Module, config) -> tuple[int, int]:
    """(trainable, total) from PEFT on a real copy of ``model``."""
    return get_peft_model(copy.deepcopy(model), config).get_nb_trainable_parameters()


def test_seed_example_rank_2_trains_14000_of_6_million() -> None:
    model = worked_example()
    assert sum(p.numel() for p in model.parameters()) == 6_000_000
    count = count_parameters(model, target_modules=["layer"], r=2)
    assert count.trainable == 14_000 == 2 * (1000 + 6000)
    assert count.total == 6_000_000 + 14_000
    assert count.modules == {"layer": 14_000}
    assert count.trainable_fraction == pytest.approx(14_000 / 6_014_000)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_preset_matches_peft_on_instantiated_models(arch: str) -> None:
    model = tiny_model(arch)
    for preset in PRESETS:
        try:
            config = lora_config(model, preset=preset, r=4)
        except ValueError:
            continue  # the preset does not apply to this architecture; lora_config's own tests cover that
        count = count_parameters(model, preset=preset, r=4)
        assert (count.trainable, count.total) == peft_count(model, config), (arch, preset)
        assert sum(count.modules.values()) == count.trainable
        assert count.peft_config.target_modules == config.target_modules


@pytest.mark.parametrize(
    ("arch", "task"),
    [("bert", "SEQ_CLS"), ("llama", "SEQ_CLS"), ("roberta", "TOKEN_CLS"), ("t5", "SEQ_2_SEQ_LM")],
)
def test_task_models_count_their_heads_like_peft(arch: str, task: str) -> None:
    model = tiny_model(arch, task)
    config = lora_config(model, preset="attention", r=4, task_type=task)
    count = count_parameters(model, preset="attention", r=4, task_type=task)
    assert (count.trainable, count.total) == peft_count(model, config)
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        assert any(name in count.modules for name in ("classifier", "score")), count.modules


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": "all-linear", "r": 3},
        {"target_modules": ["q_proj"], "use_dora": True},
        {"target_modules": ["down_proj"], "bias": "all"},
        {"target_modules": ["k_proj"], "modules_to_save": ["lm_head"]},
        {"target_modules": ["q_proj", "o_proj"], "rank_pattern": {"o_proj": 2}, "r": 6},
        {},
    ],
)
def test_lora_options_match_peft(kwargs: dict) -> None:
    model = tiny_model("llama")
    config = LoraConfig(**{"r": 8, **kwargs})
    expected = peft_count(model, config)
    count = count_parameters(model, **kwargs)
    assert (count.trainable, count.total) == expected
    assert sum(count.modules.values()) == count.trainable
    explicit = count_parameters(model, peft_config=config)
    assert (explicit.trainable, explicit.total) == expected


def test_rank_schedule_passes_through_to_the_preset() -> None:
    model = tiny_model("llama")
    schedule = RankSchedule("increasing", r=4)
    config = lora_config(model, preset="attention", r=schedule)
    assert count_parameters(model, preset="attention", r=schedule).trainable == peft_count(model, config)[0]


def test_gpt2_conv1d_counts_in_plus_out_features() -> None:
    model = tiny_model("gpt2")  # c_attn is a Conv1D 32 -> 96
    count = count_parameters(model, target_modules=["c_attn"], r=2)
    assert count.trainable == 2 * 2 * (32 + 96)
    assert (
        count.trainable
        == peft_count(model, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))[0]
    )


def test_tied_embeddings_are_counted_once() -> None:
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    count = count_parameters(model, method="full")
    assert count.total == count.trainable == sum(p.numel() for p in model.parameters())
    assert "lm_head" not in count.modules or "transformer.wte" not in count.modules


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5", "bert"])
def test_ia3_prefix_and_full_match_peft(arch: str) -> None:
    model = tiny_model(arch)
    ia3 = count_parameters(model, method="ia3")
    assert (ia3.trainable, ia3.total) == peft_count(model, IA3Config())
    prefix = count_parameters(model, method="prefix", num_virtual_tokens=5)
    expected = peft_count(
        model, PrefixTuningConfig(num_virtual_tokens=5, task_type=prefix.peft_config.task_type)
    )
    assert (prefix.trainable, prefix.total) == expected
    full = count_parameters(model, method="full")
    assert full.trainable == full.total == sum(p.numel() for p in model.parameters())
    assert ia3.method == "ia3" and prefix.method == "prefix" and full.method == "full"


def test_any_peft_method_through_peft_config() -> None:
    model = tiny_model("llama")
    config = LoHaConfig(r=4, target_modules=["q_proj", "v_proj"])
    count = count_parameters(model, peft_config=config)
    assert count.method == "loha"
    assert (count.trainable, count.total) == peft_count(model, config)


def test_per_module_breakdown_names_base_model_modules() -> None:
    model = tiny_model("llama")
    count = count_parameters(model, target_modules=["q_proj", "v_proj"], r=2)
    assert set(count.modules) == {f"model.layers.{i}.self_attn.{m}_proj" for i in range(2) for m in "qv"}
    q = model.model.layers[0].self_attn.q_proj
    assert count.modules["model.layers.0.self_attn.q_proj"] == 2 * (q.in_features + q.out_features)
    grouped = count.by_module_type()
    assert set(grouped) == {"model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.v_proj"}
    assert sum(grouped.values()) == count.trainable


def test_the_passed_model_is_not_modified() -> None:
    model = tiny_model("llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    count_parameters(model, preset="all-linear", r=4)
    count_parameters(model, method="full")
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    assert all(torch.equal(before[name], after[name]) and after[name].device.type == "cpu" for name in before)
    assert not any("lora" in name for name, _ in model.named_modules())


def test_config_input_matches_instantiated_model() -> None:
    from_config = count_parameters(tiny_config("llama"), preset="attention")
    from_model = count_parameters(tiny_model("llama"), preset="attention")
    assert (from_config.trainable, from_config.total) == (from_model.trainable, from_model.total)
    assert from_config.modules == from_model.modules


def test_llama_2_70b_all_linear_r16() -> None:
    count = count_parameters("llama-2-70b", preset="all-linear", r=16)
    assert count.trainable == 207_093_760
    assert count.total == 68_976_648_192 + 207_093_760
    plain = count_parameters(zoo_config("llama-2-70b"), target_modules="all-linear", r=16)
    assert plain.trainable == 207_093_760


def test_70b_counts_without_allocating_weights() -> None:
    """A fresh process counting 70B (LoRA and full) peaks far below even the adapters' fp32 size (828 MB)."""
    script = (
        "import json, resource\n"
        "from hf_enhance import count_parameters\n"
        "imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "lora = count_parameters('llama-2-70b', preset='all-linear', r=16)\n"
        "full = count_parameters('llama-2-70b', method='full')\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - imported\n"
        "print(json.dumps({'trainable': lora.trainable, 'full': full.trainable, 'peak': peak}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["trainable"] == 207_093_760 and result["full"] == 68_976_648_192
    assert result["peak"] < 400 * 2**20, f"peak RSS rose by {result['peak'] / 2**20:.0f} MiB while counting"


def test_gpt2_medium_attention_r8() -> None:
    count = count_parameters("gpt2-medium", preset="attention-qv", r=8)
    assert count.trainable == 24 * 8 * (1024 + 3 * 1024)  # fused c_attn: 1024 -> 3072
    assert count.total == 354_823_168 + count.trainable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "dora"}, "Unknown method 'dora'. Valid methods"),
        ({"preset": "attention", "target_modules": ["q_proj"]}, "both preset='attention' and target_modules"),
        ({"method": "full", "r": 4}, r"\['r'\] do not apply to full fine-tuning"),
        ({"method": "prefix", "preset": "attention"}, r"\['preset'\] do not apply to prefix tuning"),
        ({"method": "ia3", "r": 4}, r"\['r'\] do not apply to IA3"),
        ({"peft_config": LoraConfig(), "r": 4}, r"\['r'\] do not apply to an explicit peft_config"),
        ({"peft_config": IA3Config(), "method": "lora"}, "contradicts peft_config"),
        (
            {"peft_config": PrefixTuningConfig(num_virtual_tokens=4)},
            "has no task_type.*Set task_type='CAUSAL_LM'",
        ),
        ({"preset": "no-such-preset"}, "Unknown LoRA preset 'no-such-preset'"),
    ],
)
def test_bad_arguments_say_what_and_how_to_fix(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        count_parameters(tiny_model("llama"), **kwargs)


def test_unknown_model_name_lists_the_zoo() -> None:
    with pytest.raises(ValueError, match=r"not a model name in MODEL_ZOO.*llama-2-70b"):
        count_parameters("llama-2-71b")


def test_peft_model_is_refused() -> None:
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="PEFT model"):
        count_parameters(peft_model)


def test_quantized_parameters_are_refused() -> None:
    class Params4bit(nn.Parameter):  # bitsandbytes' packed 4-bit parameter type, by name
        pass

    model = tiny_model("gpt2")
    model.lm_head.weight = Params4bit(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Cannot count a quantized model \(Params4bit\).*model.config"):
        count_parameters(model)


def test_gpt2_config_without_architectures_is_a_causal_lm() -> None:
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64)
    count = count_parameters(config, target_modules=["c_attn"], r=1)
    assert count.model == "GPT2LMHeadModel"
    assert count.trainable == 2 * (32 + 96)
