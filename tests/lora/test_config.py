"""lora_config -> save -> vanilla PeftModel.from_pretrained round trips, per architecture and scaling."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from hf_enhance.lora import list_lora_scalings, lora_config, lora_metadata, register_lora_scaling
from hf_enhance.lora import scaling as scaling_module
from tests.lora.tiny import ARCHS, logits, tiny_config, tiny_model

SCALINGS = ["standard", "rslora", "constant"]
EXPECTED_SCALE = {"standard": 16 / 8, "rslora": 16 / math.sqrt(8), "constant": 16.0}


def _scales(peft_model: torch.nn.Module) -> set[float]:
    return {round(m.scaling["default"], 9) for m in peft_model.modules() if isinstance(m, LoraLayer)}


def _round_trip(
    arch: str, config: LoraConfig, path: Path
) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    peft_model = get_peft_model(tiny_model(arch), config).eval()
    peft_model.save_pretrained(path)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), path).eval()
    return logits(peft_model), logits(reloaded), reloaded


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_through_vanilla_peft_gives_identical_logits(
    arch: str, scaling: str, tmp_path: Path
) -> None:
    config = lora_config(tiny_config(arch), "attention-mlp", scaling=scaling, init_lora_weights=False)
    trained, reloaded_logits, reloaded = _round_trip(arch, config, tmp_path)
    with reloaded.disable_adapter():
        assert not torch.allclose(trained, logits(reloaded), atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(reloaded_logits, trained, rtol=0, atol=0)
    assert _scales(reloaded) == {round(EXPECTED_SCALE[scaling], 9)}


def test_adapter_config_holds_only_standard_peft_keys(tmp_path: Path) -> None:
    config = lora_config(tiny_config("llama"), "all-linear", scaling="rslora", lora_dropout=0.1)
    assert lora_metadata(config)["preset"] == "all-linear"
    get_peft_model(tiny_model("llama"), config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) <= {f.name for f in dataclasses.fields(LoraConfig)}
    assert "hf_enhance" not in json.dumps(saved)
    assert saved["use_rslora"] is True and saved["lora_dropout"] == 0.1
    assert sorted(saved["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_constant_scaling_does_not_depend_on_rank() -> None:
    scales = set()
    for r in (2, 8, 32):
        peft_model = get_peft_model(
            tiny_model("llama"), lora_config(tiny_config("llama"), r=r, scaling="constant")
        )
        scales |= _scales(peft_model)
    assert scales == {16.0}


def test_uniform_scalings_write_no_patterns() -> None:
    for scaling in SCALINGS:
        config = lora_config(tiny_config("llama"), scaling=scaling)
        assert config.alpha_pattern == {} and config.rank_pattern == {}
    assert lora_config(tiny_config("llama"), scaling="constant", r=4).lora_alpha == 64


@pytest.fixture
def restore_scalings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling_module, "_SCALINGS", dict(scaling_module._SCALINGS))
    monkeypatch.setattr(scaling_module, "_DESCRIPTIONS", dict(scaling_module._DESCRIPTIONS))


def test_registered_scaling_gets_the_documented_arguments(restore_scalings: None) -> None:
    calls = []

    def attention_double(**kwargs: object) -> float:
        """Twice the standard scale on attention output projections."""
        calls.append(kwargs)
        base = kwargs["lora_alpha"] / kwargs["r"]
        return 2 * base if str(kwargs["module_name"]).endswith("o_proj") else base

    register_lora_scaling("o-double", attention_double)
    assert list_lora_scalings()["o-double"].startswith("Twice the standard")
    config = lora_config(tiny_config("llama"), "attention", scaling="o-double")
    assert set(calls[0]) == {"r", "lora_alpha", "module_name", "layer_index", "num_layers"}
    assert {(c["layer_index"], c["num_layers"]) for c in calls} == {(0, 2), (1, 2)}
    assert config.alpha_pattern == {"o_proj": 32}
    peft_model = get_peft_model(tiny_model("llama"), config)
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            assert module.scaling["default"] == (4.0 if name.endswith("o_proj") else 2.0), name


def test_callable_scaling_is_accepted() -> None:
    config = lora_config(tiny_config("llama"), scaling=lambda *, lora_alpha, **_: lora_alpha / 4)
    assert config.lora_alpha == 32 and config.alpha_pattern == {}


def test_unknown_scaling_lists_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"Unknown LoRA scaling 'rs'.*\['constant', 'rslora', 'standard'\]"):
        lora_config(tiny_config("llama"), scaling="rs")


def test_scaling_returning_nan_is_an_error() -> None:
    with pytest.raises(ValueError, match="must return a finite number"):
        lora_config(tiny_config("llama"), scaling=lambda **_: float("nan"))


def test_bad_scaling_registration(restore_scalings: None) -> None:
    with pytest.raises(ValueError, match="already exists"):
        register_lora_scaling("standard", lambda **_: 1.0)
    with pytest.raises(TypeError, match="callable"):
        register_lora_scaling("x", 3.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_modules": ["q_proj"]}, "resolves from preset"),
        ({"use_rslora": True}, "resolves from preset"),
        ({"r": 0}, "positive int"),
        ({"lora_alpha": -1}, "lora_alpha must be"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lora_config(tiny_config("llama"), **kwargs)


def test_user_modules_to_save_are_kept() -> None:
    config = lora_config(tiny_config("bert", num_labels=2), task_type="SEQ_CLS", modules_to_save=["pooler"])
    assert sorted(config.modules_to_save) == ["classifier", "pooler"]
