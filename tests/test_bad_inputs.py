"""A broad sweep of bad inputs across the library: each gets a clear error raised by hf_enhance's own checks.

Clear: a built-in exception type (ValueError, TypeError, FileNotFoundError), a sentence that says what is wrong
(at least 40 characters), raised by a check in hf_enhance before any work, not by torch, transformers or PEFT
deep inside a computation. The CLI and the example scripts have their own tests
(tests/params/test_cli.py, tests/examples/test_distill_gpt2.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from hf_enhance import (
    AdaptiveGradClip,
    DistillationTrainer,
    DistillationTrainingArguments,
    EarlyStopping,
    EnhancedTrainingArguments,
    cache_teacher_logits,
    count_parameters,
    distillation_loss,
    fused_distillation_loss,
    lora_config,
    sparse_distillation_loss,
    student_from_teacher,
)
from hf_enhance.distillation import load_teacher_cache
from hf_enhance.lora import set_adapter_strength
from tests.tiny import lm_dataset, pad_collator, tiny_gpt2


def _distillation_args(tmp: Path, **fields: Any) -> DistillationTrainingArguments:
    return DistillationTrainingArguments(output_dir=str(tmp), report_to="none", use_cpu=True, **fields)


def _enhanced_args(tmp: Path, **fields: Any) -> EnhancedTrainingArguments:
    return EnhancedTrainingArguments(output_dir=str(tmp), report_to="none", use_cpu=True, **fields)


def _trainer(tmp: Path, student: Any = None, teacher: Any = "tiny", **fields: Any) -> DistillationTrainer:
    return DistillationTrainer(
        model=student if student is not None else tiny_gpt2(0),
        teacher_model=tiny_gpt2(1) if teacher == "tiny" else teacher,
        args=_distillation_args(tmp, **fields),
        train_dataset=lm_dataset(4),
        data_collator=pad_collator,
    )


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)  # fmt: skip
    return LlamaForCausalLM(config)


GPT2_TINY = GPT2Config(n_layer=2, n_embd=32, n_head=2)
CALIBRATION = torch.randint(0, 64, (2, 8))

CASES: dict[str, Callable[[Path], Any]] = {
    # distillation arguments
    "alpha is a string": lambda tmp: _distillation_args(tmp, alpha="x"),
    "alpha above 1": lambda tmp: _distillation_args(tmp, alpha=5),
    "temperature is None": lambda tmp: _distillation_args(tmp, temperature=None),
    "temperature below 0": lambda tmp: _distillation_args(tmp, temperature=-1.0),
    "unknown divergence": lambda tmp: _distillation_args(tmp, distillation_loss="kl"),
    "negative hidden weight": lambda tmp: _distillation_args(tmp, hidden_weight=-1.0),
    "NaN hidden weight": lambda tmp: _distillation_args(tmp, hidden_weight=float("nan")),
    "unknown hidden distance": lambda tmp: _distillation_args(tmp, hidden_distance="l1"),
    "fused chunk of 0": lambda tmp: _distillation_args(tmp, fused_chunk_size=0),
    # training defaults
    "negative patience": lambda tmp: _enhanced_args(tmp, early_stopping_patience=-1),
    "NaN min_delta": lambda tmp: _enhanced_args(tmp, early_stopping_min_delta=float("nan")),
    "unknown clipping mode": lambda tmp: _enhanced_args(tmp, grad_clip_mode="foo"),
    "ZClip alpha above 1": lambda tmp: _enhanced_args(tmp, grad_clip_mode="zclip", zclip_alpha=2.0),
    "AutoClip percentile 150": lambda tmp: _enhanced_args(
        tmp, grad_clip_mode="autoclip", autoclip_percentile=150
    ),
    "patience as a string": lambda tmp: EarlyStopping(patience="3"),
    "unknown early-stopping mode": lambda tmp: EarlyStopping(mode="up"),
    "unknown adaptive clipping": lambda tmp: AdaptiveGradClip("foo"),
    # the trainer
    "vocabularies differ": lambda tmp: _trainer(tmp, student=tiny_gpt2(0, vocab_size=50)),
    "no teacher": lambda tmp: DistillationTrainer(model=tiny_gpt2(0), args=_distillation_args(tmp)),
    "teacher is a number": lambda tmp: _trainer(tmp, teacher=3),
    "hidden map past the teacher": lambda tmp: _trainer(tmp, hidden_weight=1.0, hidden_layer_map=[0, 5]),
    # the losses
    "logit shapes differ": lambda tmp: distillation_loss(torch.randn(2, 5), torch.randn(2, 6)),
    "labels of the wrong shape": lambda tmp: distillation_loss(
        torch.randn(2, 5), torch.randn(2, 5), torch.ones(1)
    ),
    "label id past the classes": lambda tmp: distillation_loss(
        torch.randn(2, 5), torch.randn(2, 5), torch.tensor([1, 7])
    ),
    "fused: label id past the vocabulary": lambda tmp: fused_distillation_loss(
        torch.randn(2, 4), torch.randn(5, 4), torch.randn(2, 4), torch.randn(5, 4), torch.tensor([0, 9])
    ),
    "fused: head sizes differ": lambda tmp: fused_distillation_loss(
        torch.randn(2, 4), torch.randn(5, 4), torch.randn(2, 4), torch.randn(6, 4)
    ),
    "sparse: raw logits as log-probabilities": lambda tmp: sparse_distillation_loss(
        torch.randn(2, 5), torch.tensor([[0, 1], [1, 2]]), torch.tensor([[2.0, 1.0], [0.5, 0.2]])
    ),
    # LoRA and parameter counts
    "unknown LoRA preset": lambda tmp: lora_config(GPT2_TINY, "nope"),
    "LoRA rank 0": lambda tmp: lora_config(GPT2_TINY, "attention", r=0),
    "NaN LoRA alpha": lambda tmp: lora_config(GPT2_TINY, "attention", lora_alpha=float("nan")),
    "unknown LoRA scaling": lambda tmp: lora_config(GPT2_TINY, "attention", scaling="foo"),
    "negative adapter strength": lambda tmp: set_adapter_strength(None, -1),
    "rank above the layer": lambda tmp: count_parameters("gpt2", r=10**9),
    "unknown model name": lambda tmp: count_parameters("gpt-99"),
    "infinite LoRA alpha": lambda tmp: count_parameters("gpt2", lora_alpha=float("inf")),
    # students from teachers
    "layer index out of range": lambda tmp: student_from_teacher(_llama(), layers=[0, 9]),
    "num_layers as a string": lambda tmp: student_from_teacher(
        _llama(), num_layers="2", layer_strategy="uniform"
    ),
    "heads that split a key/value group": lambda tmp: student_from_teacher(
        _llama(), num_attention_heads=3, calibration=CALIBRATION, progress=False
    ),
    "width pruning without calibration": lambda tmp: student_from_teacher(_llama(), intermediate_size=8),
    "calibration ids of another tokenizer": lambda tmp: student_from_teacher(
        _llama(), intermediate_size=8, calibration=torch.full((2, 8), 500), progress=False
    ),
    "teacher given as a name": lambda tmp: student_from_teacher("gpt2", num_layers=2),
    # teacher caches
    "cache top_k of 0": lambda tmp: cache_teacher_logits(
        tiny_gpt2(1), lm_dataset(4), output_dir=tmp / "c", top_k=0
    ),
    "no cache in the folder": lambda tmp: load_teacher_cache(tmp / "none"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_clear_error_from_hf_enhance(name: str, tmp_path: Path) -> None:
    with pytest.raises((ValueError, TypeError, OSError)) as caught:
        CASES[name](tmp_path)
    assert type(caught.value).__module__ == "builtins"
    assert len(str(caught.value)) >= 40, str(caught.value)
    raised_in = str(caught.traceback[-1].path)
    assert "/hf_enhance/" in raised_in, f"raised in {raised_in}, not by an hf_enhance check: {caught.value}"
