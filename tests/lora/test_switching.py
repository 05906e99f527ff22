"""Task switching on one base: merge A, run, unmerge (W0 restored), merge B."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from hf_enhance.lora import get_adapter_strength, lora_config, merged_adapter, switch_adapter
from hf_enhance.lora.switching import merged_adapters
from tests.lora.tiny import logits, tiny_config, tiny_model


def _two_adapters(arch: str) -> PeftModel:
    config = tiny_config(arch)
    peft_model = get_peft_model(
        tiny_model(arch), lora_config(config, "attention-mlp", init_lora_weights=False)
    )
    torch.manual_seed(1)
    peft_model.add_adapter("b", lora_config(config, "all-linear", scaling="rslora", init_lora_weights=False))
    return peft_model.eval()


def _base_weights(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bart"])
def test_merge_a_unmerge_merge_b_matches_unmerged_peft(arch: str) -> None:
    peft_model = _two_adapters(arch)
    w0 = _base_weights(peft_model)
    expected = {}
    for name in ("default", "b"):
        peft_model.set_adapter(name)
        expected[name] = logits(peft_model)
    assert not torch.allclose(expected["default"], expected["b"], atol=1e-4)

    for name in ("default", "b", "default"):
        switch_adapter(peft_model, name)
        assert merged_adapters(peft_model) == [name]
        torch.testing.assert_close(logits(peft_model), expected[name], rtol=0, atol=1e-5)

    peft_model.unmerge_adapter()
    assert merged_adapters(peft_model) == []
    for key, value in _base_weights(peft_model).items():
        torch.testing.assert_close(value, w0[key], rtol=0, atol=1e-6, msg=key)


def test_merged_adapter_context_restores_w0_and_supports_strength() -> None:
    peft_model = _two_adapters("llama")
    w0 = _base_weights(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model)
    with merged_adapter(peft_model, "b", strength=0):
        torch.testing.assert_close(logits(peft_model), base, rtol=0, atol=1e-5)
    assert merged_adapters(peft_model) == []
    for key, value in _base_weights(peft_model).items():
        torch.testing.assert_close(value, w0[key], rtol=0, atol=1e-6)


def test_unknown_adapter_lists_loaded_ones() -> None:
    with pytest.raises(ValueError, match=r"Loaded adapters: \['b', 'default'\]"):
        switch_adapter(_two_adapters("llama"), "c")


@pytest.mark.parametrize("fail", [False, True])
def test_merged_adapter_context_puts_everything_back(fail: bool) -> None:
    """Active adapter, the adapter's strength and an earlier merge are as before the block, also after an error."""
    peft_model = _two_adapters("llama")
    peft_model.set_adapter("default")
    before = logits(peft_model)
    w0 = _base_weights(peft_model)
    switch_adapter(peft_model, "default")  # merged before the block
    merged_weights = _base_weights(peft_model)
    try:
        with merged_adapter(peft_model, "b", strength=0.5):
            assert merged_adapters(peft_model) == ["b"]
            if fail:
                raise RuntimeError("inside the block")
    except RuntimeError:
        assert fail
    assert peft_model.active_adapter == "default"
    assert merged_adapters(peft_model) == ["default"]
    for key, value in _base_weights(peft_model).items():
        torch.testing.assert_close(value, merged_weights[key], rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(logits(peft_model), before, rtol=0, atol=1e-5)
    peft_model.unmerge_adapter()
    peft_model.set_adapter("b")
    assert get_adapter_strength(peft_model, "b") == pytest.approx(1.0)  # not left at 0.5
    for key, value in _base_weights(peft_model).items():
        torch.testing.assert_close(value, w0[key], rtol=0, atol=1e-6, msg=key)
