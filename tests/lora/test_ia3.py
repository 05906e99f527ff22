"""ia3_config: the preset resolution for (IA)^3, feed-forward modules included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.ia3 import IA3Layer

from hf_enhance.lora import architecture_roles, ia3_config
from hf_enhance.modeling import meta_model
from tests.lora.tiny import ARCHS, logits, tiny_config, tiny_model

IA3_ARCHS = [arch for arch in ARCHS if arch != "mixtral"]


def _ia3_layers(peft_model: PeftModel) -> dict[str, IA3Layer]:
    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, IA3Layer)
    }


@pytest.mark.parametrize("arch", IA3_ARCHS)
def test_ia3_preset_targets_keys_values_and_feedforward(arch: str, tmp_path: Path) -> None:
    roles = architecture_roles(meta_model(tiny_config(arch)))
    expected = {n for role in ("key", "value", "qkv", "mlp_out") for n in roles[role]}
    peft_model = get_peft_model(tiny_model(arch), ia3_config(tiny_config(arch))).eval()
    layers = _ia3_layers(peft_model)
    assert set(layers) == expected
    for name, layer in layers.items():
        assert layer.is_feedforward == (name in roles["mlp_out"]), name
        torch.nn.init.normal_(layer.ia3_l["default"], mean=1.0, std=0.2)
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded), logits(peft_model), rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["attention", "all-linear"])
def test_lora_presets_work_for_ia3(preset: str) -> None:
    config = ia3_config(tiny_config("bert"), preset)
    layers = _ia3_layers(get_peft_model(tiny_model("bert"), config))
    feedforward = {name for name, layer in layers.items() if layer.is_feedforward}
    if preset == "attention":
        assert feedforward == set() and len(layers) == 8
    else:
        assert feedforward == {f"bert.encoder.layer.{i}.output.dense" for i in (0, 1)}


def test_gpt2_sets_fan_in_fan_out() -> None:
    assert ia3_config(tiny_config("gpt2")).fan_in_fan_out is True


def test_fused_experts_are_rejected_with_a_fix() -> None:
    with pytest.raises(ValueError, match=r"fused mixture-of-experts.*preset='attention'"):
        ia3_config(tiny_config("mixtral"))
    assert ia3_config(tiny_config("mixtral"), "attention").feedforward_modules == set()


def test_unknown_preset_and_clashing_arguments() -> None:
    with pytest.raises(ValueError, match=r"Valid presets: \[.*'ia3'"):
        ia3_config(tiny_config("llama"), "kv")
    with pytest.raises(ValueError, match="resolves from the preset"):
        ia3_config(tiny_config("llama"), feedforward_modules=["down_proj"])
