"""The teacher sharded with FSDP2 and the vocabulary-parallel objective: errors in one process, training in two.

The exactness checks of 2 processes against 1 (logits, loss, gradients, one FSDP2 student step, memory) run in
tests/benchmarks/test_sharded_teacher_bench.py through benchmarks/sharded_teacher.py --cpu.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from hf_enhance import fused_distillation_loss
from hf_enhance.distillation.placement.fsdp2 import (
    is_sharded,
    shard_teacher,
    vocab_parallel_distillation_loss,
    vocab_parallel_objective,
)
from hf_enhance.distillation.placement.heads import head_bypassed, plain_lm_head
from hf_enhance.modeling import meta_model
from tests.distillation.distributed_teacher import check_trains_like_one_process
from tests.tiny import VOCAB, tiny_gpt2


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo group of one process, so the collective code runs in the test process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _inputs(tokens: int = 6, hidden: int = 8, vocab: int = VOCAB) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(tokens, hidden, generator=generator, requires_grad=True),
        torch.randn(vocab, hidden, generator=generator, requires_grad=True),
        torch.randn(tokens, hidden, generator=generator),
        torch.randn(vocab, hidden, generator=generator),
    )


def test_without_a_process_group_the_error_says_to_launch_distributed() -> None:
    with pytest.raises(RuntimeError, match=r"torch\.distributed to be initialised.*fused_distillation_loss"):
        vocab_parallel_distillation_loss(*_inputs())
    with pytest.raises(RuntimeError, match="torchrun"):
        shard_teacher(tiny_gpt2())


def test_a_teacher_on_the_meta_device_is_refused_before_sharding(one_process_group: None) -> None:
    with pytest.raises(ValueError, match="meta device"):
        shard_teacher(meta_model(tiny_gpt2().config))


def test_a_deepspeed_engine_as_teacher_is_refused_as_mixed_engines(one_process_group: None) -> None:
    engine = type("DeepSpeedEngine", (nn.Module,), {"__module__": "deepspeed.runtime.engine"})()
    with pytest.raises(ValueError, match="Mixing engines"):
        shard_teacher(engine)


def test_a_teacher_without_the_named_blocks_says_which_classes_it_looked_for(one_process_group: None) -> None:
    with pytest.raises(ValueError, match=r"\['NoSuchLayer'\].*block_classes"):
        shard_teacher(tiny_gpt2(), block_classes=["NoSuchLayer"])


def test_shard_teacher_freezes_and_shards_every_block(one_process_group: None) -> None:
    teacher = shard_teacher(tiny_gpt2(n_layer=3))
    assert is_sharded(teacher) and not teacher.training
    assert all(isinstance(block, nn.Module) and is_sharded(block) for block in teacher.transformer.h)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert shard_teacher(teacher) is teacher  # already sharded: kept as it is


def test_an_untied_head_sharded_on_its_own_is_still_a_plain_head_for_the_fused_objective(
    one_process_group: None,
) -> None:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    teacher = shard_teacher(LlamaForCausalLM(config))
    head = teacher.get_output_embeddings()
    assert is_sharded(head)  # its own FSDP2 unit: an FSDPLinear
    assert plain_lm_head(teacher) is head


def test_head_slices_of_different_sizes_are_refused(one_process_group: None) -> None:
    student_hidden, student_head, teacher_hidden, teacher_head = _inputs()
    with pytest.raises(ValueError, match=r"differ in size.*\[\(97, 96\)\]"):
        vocab_parallel_distillation_loss(student_hidden, student_head, teacher_hidden, teacher_head[:96])


def test_label_ids_are_checked_against_the_whole_vocabulary(one_process_group: None) -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, VOCAB])
    with pytest.raises(ValueError, match=f"id {VOCAB}, outside \\[0, {VOCAB}\\)"):
        vocab_parallel_distillation_loss(*_inputs(), labels)


def test_one_rank_equals_the_fused_objective(one_process_group: None) -> None:
    inputs = _inputs()
    labels = torch.tensor([3, -100, 5, 7, 11, 13])
    result = vocab_parallel_distillation_loss(*inputs, labels, kind="jsd", temperature=2.0)
    result.loss.backward()
    grads = [inputs[0].grad.clone(), inputs[1].grad.clone()]
    inputs[0].grad = inputs[1].grad = None
    expected = fused_distillation_loss(*inputs, labels, kind="jsd", temperature=2.0)
    expected.loss.backward()
    torch.testing.assert_close(result.loss, expected.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads, [inputs[0].grad, inputs[1].grad], rtol=1e-5, atol=1e-7)


def test_a_student_head_resharded_after_forward_is_refused(one_process_group: None) -> None:
    student, teacher = tiny_gpt2(), shard_teacher(tiny_gpt2(seed=1))
    fully_shard(student, reshard_after_forward=True)  # the head is a shard again after forward
    ids = torch.randint(0, VOCAB, (1, 5))
    with head_bypassed(student) as student_head:
        hidden = student(input_ids=ids).logits
    with torch.no_grad(), head_bypassed(teacher) as teacher_head:
        teacher_hidden = teacher(input_ids=ids).logits
    with pytest.raises(ValueError, match="reshard_after_forward=False"):
        vocab_parallel_objective(hidden, student_head, teacher_hidden, teacher_head, None)


def test_a_ddp_student_with_a_sharded_teacher_trains_like_one_process_with_the_whole_teacher(
    tmp_path: Path,
) -> None:
    ranks = check_trains_like_one_process(tmp_path, "sharded")
    assert [rank["fused"] for rank in ranks] == [True, True]
    assert [rank["teacher_share"] for rank in ranks] == [pytest.approx(0.5, abs=0.05)] * 2
