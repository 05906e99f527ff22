"""Adapter strength: 0 = base, 1 = as trained, k > 1 = more; baked into saved alpha for vanilla PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from hf_enhance.lora import (
    RankSchedule,
    get_adapter_strength,
    lora_config,
    save_adapter,
    set_adapter_strength,
)
from tests.lora.tiny import logits, tiny_config, tiny_model


def _peft(arch: str = "llama", **kwargs: object) -> PeftModel:
    config = lora_config(tiny_config(arch), "attention-mlp", init_lora_weights=False, **kwargs)
    return get_peft_model(tiny_model(arch), config).eval()


def _linear_peft() -> PeftModel:
    """One linear layer: the output is exactly base + k * delta, so strength can be checked exactly."""
    from peft import LoraConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["0"], init_lora_weights=False))


def test_strength_interpolates_linearly_on_a_linear_layer() -> None:
    peft_model = _linear_peft()
    x = torch.randn(3, 6)
    with peft_model.disable_adapter():
        base = peft_model(x)
    delta = peft_model(x) - base
    for k in (0.0, 0.5, 1.0, 2.5):
        set_adapter_strength(peft_model, k)
        torch.testing.assert_close(peft_model(x), base + k * delta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaling", ["standard", "rslora", "constant"])
def test_zero_is_base_and_one_is_trained(scaling: str) -> None:
    peft_model = _peft(scaling=scaling)
    trained = logits(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model)
    set_adapter_strength(peft_model, 0)
    torch.testing.assert_close(logits(peft_model), base, rtol=0, atol=1e-6)
    set_adapter_strength(peft_model, 3)
    assert get_adapter_strength(peft_model) == 3
    set_adapter_strength(peft_model, 1)  # absolute, not cumulative
    torch.testing.assert_close(logits(peft_model), trained, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("llama", {"scaling": "standard"}),
        ("gpt2", {"scaling": "rslora"}),
        ("t5", {"scaling": "constant"}),
        ("qwen2", {"r": RankSchedule("increasing", r=4)}),
    ],
)
@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_saved_strength_reloads_in_vanilla_peft(
    arch: str, kwargs: dict, strength: float, tmp_path: Path
) -> None:
    peft_model = _peft(arch, **kwargs)
    out = save_adapter(peft_model, tmp_path, strength=strength)
    set_adapter_strength(peft_model, strength)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded), logits(peft_model), rtol=1e-5, atol=1e-6)
    record = json.loads((out / "hf_enhance.json").read_text())
    assert record["strength"] == strength
    assert record["lora_config"]["preset"] == "attention-mlp"
    # the in-memory config is untouched: saving again at strength 1 gives the trained adapter back
    assert peft_model.peft_config["default"].lora_alpha == record["trained_lora_alpha"]


def test_save_uses_current_strength_by_default(tmp_path: Path) -> None:
    peft_model = _peft()
    set_adapter_strength(peft_model, 1.5)
    save_adapter(peft_model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["lora_alpha"] == 24


def test_named_adapters_save_where_vanilla_peft_loads_them(tmp_path: Path) -> None:
    peft_model = _peft()
    peft_model.add_adapter(
        "task_a", lora_config(tiny_config("llama"), "attention-qv", init_lora_weights=False)
    )
    peft_model.add_adapter("task_b", lora_config(tiny_config("llama"), "mlp", init_lora_weights=False))
    expected = {}
    for name, strength in (("default", 1.0), ("task_a", 2.0), ("task_b", 0.5)):
        out = save_adapter(peft_model, tmp_path / name, strength=strength, adapter_name=name)
        assert out == tmp_path / name
        assert {"adapter_config.json", "adapter_model.safetensors", "hf_enhance.json"} <= {
            f.name for f in out.iterdir()
        }
        assert [f for f in out.iterdir() if f.is_dir()] == []
        assert json.loads((out / "hf_enhance.json").read_text())["adapter_name"] == name
        peft_model.set_adapter(name)
        set_adapter_strength(peft_model, strength, name)
        expected[name] = logits(peft_model)
        set_adapter_strength(peft_model, 1, name)
    assert len({tuple(t.flatten().tolist()) for t in expected.values()}) == 3
    for name, want in expected.items():
        reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / name).eval()
        torch.testing.assert_close(logits(reloaded), want, rtol=1e-5, atol=1e-6)
    served = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "default").eval()
    for name in ("task_a", "task_b"):
        served.load_adapter(tmp_path / name, adapter_name=name)
    for name, want in expected.items():
        served.set_adapter(name)
        torch.testing.assert_close(logits(served), want, rtol=1e-5, atol=1e-6)


def test_errors() -> None:
    peft_model = _peft()
    with pytest.raises(ValueError, match=r"strength must be >= 0 \(0 = base model"):
        set_adapter_strength(peft_model, -1)
    with pytest.raises(ValueError, match="finite number"):
        set_adapter_strength(peft_model, float("inf"))
    with pytest.raises(ValueError, match=r"Unknown adapter 'nope'. Loaded adapters: \['default'\]"):
        set_adapter_strength(peft_model, 1, adapter_name="nope")
    with pytest.raises(TypeError, match=r"Expected a peft\.PeftModel"):
        set_adapter_strength(tiny_model("llama"), 1)
    peft_model.merge_adapter()
    with pytest.raises(ValueError, match="merged into the base weights"):
        set_adapter_strength(peft_model, 2)


def test_dora_is_rejected() -> None:
    peft_model = _peft(use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        set_adapter_strength(peft_model, 2)


def test_non_uniform_strength_is_reported() -> None:
    peft_model = _peft()
    next(m for m in peft_model.modules() if hasattr(m, "set_scale") and "default" in m.scaling).set_scale(
        "default", 3
    )
    with pytest.raises(ValueError, match="different strengths"):
        get_adapter_strength(peft_model)


def test_an_adapter_on_a_built_student_reloads_with_auto_peft_to_identical_logits(tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    from hf_enhance import student_from_teacher
    from tests.students.tiny import tiny_teacher, token_ids

    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "teacher")  # a teacher on disk, as users have one
    teacher.name_or_path = str(tmp_path / "teacher")
    student = student_from_teacher(teacher, num_layers=1, layer_strategy="uniform", progress=False)
    peft_model = get_peft_model(student, lora_config(student, "attention", init_lora_weights=False)).eval()
    ids = token_ids()
    expected = peft_model(input_ids=ids).logits
    save_adapter(peft_model, tmp_path / "adapter")
    recorded = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    assert recorded == str((tmp_path / "adapter" / "base").resolve())  # the pruned student, not the teacher
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    assert reloaded.get_base_model().config.num_hidden_layers == 1
    assert torch.equal(reloaded(input_ids=ids).logits, expected)
    # A student loaded from its saved folder is found by that name: no second copy of the base.
    student.save_pretrained(tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    save_adapter(get_peft_model(loaded, lora_config(loaded, "attention")), tmp_path / "adapter2")
    assert not (tmp_path / "adapter2" / "base").exists()
    assert json.loads((tmp_path / "adapter2" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == str(tmp_path / "student")
