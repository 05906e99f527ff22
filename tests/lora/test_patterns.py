"""Per-layer rules land on the right layers: keys match one family, layers.1 never matches layers.11."""

from __future__ import annotations

import re

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key

from hf_enhance.lora import RankSchedule, lora_config
from hf_enhance.lora.patterns import clean_number, suffix_targets
from tests.lora.tiny import tiny_config

LAYERS = 12


def _model_12() -> torch.nn.Module:
    config = tiny_config("llama", num_hidden_layers=LAYERS)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(config)


def _layer(name: str) -> int:
    return int(re.search(r"layers\.(\d+)\.", name).group(1))


def _lora_layers(peft_model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def test_per_layer_scale_lands_on_each_of_12_layers() -> None:
    def by_depth(*, r: int, lora_alpha: float, layer_index: int | None, **_: object) -> float:
        return lora_alpha / r * (layer_index + 1)

    config = lora_config(tiny_config("llama", num_hidden_layers=LAYERS), "attention-mlp", scaling=by_depth)
    layers = _lora_layers(get_peft_model(_model_12(), config))
    assert len(layers) == 7 * LAYERS
    for name, module in layers.items():
        assert module.scaling["default"] == pytest.approx(2.0 * (_layer(name) + 1)), name


def test_rule_on_layer_1_does_not_touch_layer_11() -> None:
    def boost_layer_1(*, r: int, lora_alpha: float, layer_index: int | None, **_: object) -> float:
        return lora_alpha / r * (5 if layer_index == 1 else 1)

    config = lora_config(tiny_config("llama", num_hidden_layers=LAYERS), "attention", scaling=boost_layer_1)
    assert config.alpha_pattern == {r"layers\.1\..*": 80}
    for name, module in _lora_layers(get_peft_model(_model_12(), config)).items():
        assert module.scaling["default"] == (10.0 if _layer(name) == 1 else 2.0), name


def test_rule_on_one_module_family_in_one_layer() -> None:
    def q_in_layer_11(
        *, r: int, lora_alpha: float, layer_index: int | None, module_name: str, **_: object
    ) -> float:
        return 3.0 if layer_index == 11 and module_name.endswith("q_proj") else lora_alpha / r

    config = lora_config(tiny_config("llama", num_hidden_layers=LAYERS), "attention", scaling=q_in_layer_11)
    assert config.alpha_pattern == {r"layers\.11\.self_attn\.q_proj": 24}
    hits = [name for name in _lora_layers(get_peft_model(_model_12(), config)) if name.endswith("q_proj")]
    for name in hits:
        key = get_pattern_key(config.alpha_pattern.keys(), name)
        assert (key in config.alpha_pattern) == (_layer(name) == 11), name


def test_rank_schedule_lands_on_each_layer() -> None:
    schedule = RankSchedule("increasing", r=8)
    config = lora_config(tiny_config("llama", num_hidden_layers=LAYERS), "attention", r=schedule)
    layers = _lora_layers(get_peft_model(_model_12(), config))
    per_layer: dict[int, set[int]] = {}
    for name, module in layers.items():
        per_layer.setdefault(_layer(name), set()).add(module.lora_A["default"].weight.shape[0])
        # scale follows each module's own rank: standard alpha / r
        assert module.scaling["default"] == pytest.approx(16 / module.r["default"]), name
    ranks = [per_layer[i].pop() for i in range(LAYERS)]
    assert all(len(per_layer[i]) == 0 for i in range(LAYERS))
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]


def test_rank_schedule_with_rslora_keeps_alpha_over_sqrt_rank() -> None:
    config = lora_config(
        tiny_config("llama", num_hidden_layers=LAYERS), r=RankSchedule("increasing", r=8), scaling="rslora"
    )
    assert config.use_rslora and config.alpha_pattern == {} and config.rank_pattern
    for name, module in _lora_layers(get_peft_model(_model_12(), config)).items():
        assert module.scaling["default"] == pytest.approx(16 / module.r["default"] ** 0.5), name


def test_every_key_matches_exactly_one_family_under_peft_rules() -> None:
    schedule = RankSchedule("decreasing", r=4)
    config = lora_config(tiny_config("llama", num_hidden_layers=LAYERS), "attention-mlp", r=schedule)
    names = list(_lora_layers(get_peft_model(_model_12(), config)))
    for key in config.rank_pattern:
        hits = {_layer(n) for n in names if re.match(rf"(.*\.)?({key})$", n)}
        assert len(hits) == 1, key


def test_suffix_targets_are_shortest_and_exact() -> None:
    universe = ["a.attn.c_proj", "a.mlp.c_proj", "a.attn.c_attn", "b.attn.c_proj", "a.mlp"]
    assert suffix_targets(["a.attn.c_proj", "b.attn.c_proj"], universe) == ["attn.c_proj"]
    assert suffix_targets(["a.attn.c_proj"], universe) == ["a.attn.c_proj"]
    assert suffix_targets(["a.mlp.c_proj", "a.attn.c_proj", "b.attn.c_proj"], universe) == ["c_proj"]


def test_suffix_never_starts_at_a_layer_index() -> None:
    universe = ["h.1.q", "h.11.q"]
    assert suffix_targets(["h.1.q"], universe) == ["h.1.q"]


def test_clean_number_removes_float_noise() -> None:
    assert clean_number(16 / 8**0.5 * 8**0.5) == 16
    assert isinstance(clean_number(16.0), int)
    assert clean_number(0.1 + 0.2) == 0.3
