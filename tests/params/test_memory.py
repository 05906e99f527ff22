"""Memory estimates: agree with accelerate for full fine-tuning and with real tensors after an AdamW step."""

from __future__ import annotations

import pytest
import torch
from accelerate.commands.estimate import estimate_training_usage
from accelerate.utils import calculate_maximum_sizes
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_enhance import count_parameters
from hf_enhance.params import MEMORY_SETUPS, estimate_memory
from hf_enhance.params.memory import nf4_bytes
from tests.lora.tiny import inputs, tiny_model


def buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def test_nf4_storage_of_a_4096_square_weight() -> None:
    # 4 bits per weight + one uint8 absmax per 64 weights + one float32 absmax per 256 of those.
    assert nf4_bytes(4096 * 4096) == 8_388_608 + 262_144 + 4 * 1_024


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bert"])
def test_full_fine_tuning_fp32_agrees_with_accelerate(arch: str) -> None:
    model = tiny_model(arch)
    accelerate = estimate_training_usage(calculate_maximum_sizes(model)[0], "float32")
    estimate = count_parameters(model, method="full").memory("fp32")
    # accelerate counts buffers (rotary inv_freq, position ids) as trained; they get no gradient or state.
    buffers = buffer_bytes(model)
    assert estimate.weights == accelerate["model"]
    assert estimate.gradients == accelerate["gradients"] - buffers
    assert estimate.optimizer_states == accelerate["optimizer"] - 2 * buffers
    # accelerate reports max() of its entries as "Training using Adam": the step, 4x the fp32 model.
    assert estimate.total == max(accelerate.values()) - 3 * buffers
    if buffers == 0:
        assert estimate.total == max(accelerate.values())


def real_training_bytes(model: nn.Module) -> tuple[int, int, int]:
    """(weights, gradients, AdamW states) bytes after one real training step on ``model``."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    model(**inputs(model), labels=inputs(model)["input_ids"]).loss.backward()
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + buffer_bytes(model)
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    states = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for key, t in state.items()
        if key != "step"  # AdamW's scalar step counter, 4 bytes per tensor, is left out of the estimate
    )
    return weights, gradients, states


@pytest.mark.parametrize("setup", ["fp32", "bf16"])
def test_lora_estimate_equals_real_tensors_after_an_adamw_step(setup: str) -> None:
    model = tiny_model("llama")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    estimate = count_parameters(model, peft_config=config).memory(setup)
    if setup == "bf16":
        model.to(torch.bfloat16)
    peft_model = get_peft_model(model, config)  # PEFT upcasts the adapters to float32 in a bf16 model
    assert (estimate.weights, estimate.gradients, estimate.optimizer_states) == real_training_bytes(
        peft_model
    )


@pytest.mark.parametrize("setup", ["fp32", "bf16"])
def test_full_estimate_equals_real_tensors_after_an_adamw_step(setup: str) -> None:
    model = tiny_model("gpt2")
    estimate = count_parameters(model, method="full").memory(setup)
    if setup == "bf16":
        model.to(torch.bfloat16)
    assert (estimate.weights, estimate.gradients, estimate.optimizer_states) == real_training_bytes(model)


def test_qlora_quantizes_block_linears_but_not_the_lm_head() -> None:
    model = tiny_model("llama")
    count = count_parameters(model, target_modules=["q_proj", "v_proj"], r=4)
    bf16, qlora = count.memory("bf16"), count.memory("qlora")
    linears = [m for name, m in model.named_modules() if type(m) is nn.Linear and name != "lm_head"]
    assert all(name.startswith("model.layers.") for name, m in model.named_modules() if m in linears)
    expected = bf16.weights - sum(2 * m.weight.numel() - nf4_bytes(m.weight.numel()) for m in linears)
    assert qlora.weights == expected
    assert (qlora.gradients, qlora.optimizer_states) == (bf16.gradients, bf16.optimizer_states)
    assert qlora.gradients == 4 * count.trainable and qlora.optimizer_states == 8 * count.trainable


def test_qlora_is_refused_for_full_fine_tuning() -> None:
    count = count_parameters(tiny_model("llama"), method="full")
    assert count.memory_setups == ["fp32", "bf16"]
    with pytest.raises(ValueError, match=r"4-bit weights cannot be trained.*method='lora'"):
        count.memory("qlora")


def test_unknown_setup_lists_the_valid_ones() -> None:
    count = count_parameters(tiny_model("llama"), target_modules=["q_proj"])
    with pytest.raises(
        ValueError, match=r"Unknown memory setup 'fp8'. Valid setups: \['fp32', 'bf16', 'qlora'\]"
    ):
        count.memory("fp8")
    assert list(MEMORY_SETUPS) == ["fp32", "bf16", "qlora"]
    assert estimate_memory(count.tensors, "bf16") == count.memory("bf16")


def test_70b_full_fine_tuning_agrees_with_accelerate_on_the_meta_model() -> None:
    from hf_enhance.modeling import meta_model
    from hf_enhance.params import zoo_config

    model = meta_model(zoo_config("llama-2-70b"))
    accelerate = estimate_training_usage(calculate_maximum_sizes(model)[0], "float32")
    estimate = count_parameters("llama-2-70b", method="full").memory("fp32")
    assert estimate.total == max(accelerate.values()) - 3 * buffer_bytes(model)
    assert estimate.total == 16 * 68_976_648_192 + buffer_bytes(model)
