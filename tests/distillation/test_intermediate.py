"""Intermediate-layer (hidden-state) distillation: the pure loss, layer maps, hooks and DistillationTrainer."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from hf_enhance.distillation import (
    DistillationTrainer,
    DistillationTrainingArguments,
    distillation_loss,
    hidden_state_loss,
)
from hf_enhance.distillation.terms.blocks import (
    build_projections,
    captured_block_outputs,
    default_layer_map,
)
from hf_enhance.distillation.trainer import HIDDEN_PROJECTIONS_NAME
from hf_enhance.objectives.hidden_states import uniform_layer_map
from tests.distillation.ddp_hidden import train as ddp_train
from tests.launch import torchrun_two_processes
from tests.tiny import (
    PLAIN_SGD,
    VOCAB,
    GRUClassifier,
    distillation_args,
    lm_dataset,
    pad_collator,
    tiny_bert_classifier,
    tiny_gpt2,
)


def make_args(tmp_path: Path, **overrides: Any) -> DistillationTrainingArguments:
    return distillation_args(tmp_path, **{"max_steps": 2, "hidden_weight": 1.0, **overrides})


def tiny_llama(seed: int, hidden: int = 16, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def block_outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Every GPT-2 block's output, from output_hidden_states of a copy without the final layer norm."""
    twin = copy.deepcopy(model)
    twin.transformer.ln_f = nn.Identity()
    return twin(**batch, output_hidden_states=True).hidden_states[1:]


def loop_reference(student, teacher, mask, distance, weights) -> torch.Tensor:
    """hidden_state_loss written out token by token."""
    layer_means = []
    for s_layer, t_layer, weight in zip(student, teacher, weights, strict=True):
        total, count = torch.zeros(()), 0
        for b in range(s_layer.shape[0]):
            for t in range(s_layer.shape[1]):
                if not mask[b, t]:
                    continue
                s = s_layer[b, t].float() @ weight.T if weight is not None else s_layer[b, t].float()
                u = t_layer[b, t].float()
                if distance == "cosine":
                    total = total + 1 - (s * u).sum() / (s.norm() * u.norm())
                else:
                    total = total + sum((s[i] - u[i]) ** 2 for i in range(len(s))) / len(s)
                count += 1
        layer_means.append(total / count)
    return sum(layer_means) / len(layer_means)


# ---- the pure loss ----


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_hidden_state_loss_matches_a_loop_reference(distance: str) -> None:
    student = [torch.randn(2, 4, 3, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(2, 4, 5) for _ in range(2)]
    projections = [nn.Linear(3, 5, bias=False), nn.Linear(3, 5, bias=False)]
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    loss = hidden_state_loss(student, teacher, mask, distance, projections)
    expected = loop_reference(student, teacher, mask, distance, [p.weight for p in projections])
    torch.testing.assert_close(loss, expected)
    params = [*student, *(p.weight for p in projections)]
    grads = torch.autograd.grad(loss, params)
    expected_grads = torch.autograd.grad(expected, params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_hidden_state_loss_in_float32_without_projections_and_mask() -> None:
    student = [torch.randn(2, 3, 4).to(torch.bfloat16)]
    teacher = [torch.randn(2, 3, 4).to(torch.bfloat16)]
    loss = hidden_state_loss(student, teacher, None, "mse")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loop_reference(student, teacher, torch.ones(2, 3), "mse", [None]))
    fully_masked = [torch.randn(1, 2, 4, requires_grad=True)]
    empty = hidden_state_loss(fully_masked, [torch.randn(1, 2, 4)], torch.zeros(1, 2, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(fully_masked[0].grad).all()


def test_hidden_state_loss_refuses_mismatches() -> None:
    states = [torch.randn(2, 3, 4)]
    with pytest.raises(ValueError, match="need a projection"):
        hidden_state_loss(states, [torch.randn(2, 3, 6)])
    with pytest.raises(ValueError, match="one of each per mapped layer pair"):
        hidden_state_loss(states, states * 2)
    with pytest.raises(ValueError, match="Valid choices: cosine, mse"):
        hidden_state_loss(states, states, distance="l2")


# ---- layer maps, hooks, projections ----


def test_uniform_layer_map() -> None:
    assert uniform_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]
    assert uniform_layer_map(4, 6) == [1, 2, 4, 5]  # 1.5 and 4.5 round up
    assert uniform_layer_map(3, 3) == [0, 1, 2]
    assert uniform_layer_map(4, 2) == [0, 0, 1, 1]
    for students in range(1, 13):
        for teachers in range(1, 13):
            layer_map = uniform_layer_map(students, teachers)
            assert layer_map[-1] == teachers - 1 and min(layer_map) >= 0
            assert layer_map == sorted(layer_map)


def test_default_layer_map_prefers_the_layers_the_student_was_built_from() -> None:
    teacher, student = tiny_gpt2(seed=1, n_layer=6), tiny_gpt2(seed=0, n_layer=2)
    assert default_layer_map(student, teacher) == [2, 5]
    student.config.hf_enhance_student = {"layers": [0, 4]}
    assert default_layer_map(student, teacher) == [0, 4]
    lora = get_peft_model(student, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert default_layer_map(lora, teacher) == [0, 4]


def test_captured_block_outputs_match_the_blocks_and_hooks_are_removed() -> None:
    model = tiny_gpt2(n_layer=3)
    batch = {"input_ids": torch.randint(1, VOCAB, (2, 5))}
    blocks = [model.transformer.h[2], model.transformer.h[0]]
    with captured_block_outputs(blocks) as outputs:
        assert outputs == [None, None]
        model(**batch)
    expected = block_outputs(model, batch)
    assert torch.equal(outputs[0], expected[2]) and torch.equal(outputs[1], expected[0])
    assert all(not block._forward_hooks for block in model.transformer.h)

    class TupleBlock(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x * 2, None

    block = TupleBlock()
    with pytest.raises(RuntimeError, match="boom"), captured_block_outputs([block]) as outputs:
        block(torch.ones(2))
        raise RuntimeError("boom")
    assert torch.equal(outputs[0], torch.full((2,), 2.0))
    assert not block._forward_hooks


def test_projections_start_as_the_scatter_of_the_kept_channels() -> None:
    teacher, student = tiny_gpt2(seed=1, n_embd=8), tiny_gpt2(seed=0, n_embd=4)
    assert build_projections(tiny_gpt2(n_embd=8), teacher, 2) is None
    default = build_projections(student, teacher, 2)
    assert len(default) == 2 and default[0].weight.shape == (8, 4) and default[0].bias is None
    student.config.hf_enhance_student = {"layers": [0, 1], "hidden_channels": [6, 0, 3, 7]}
    scattered = build_projections(student, teacher, 2)
    x = torch.randn(5, 4)
    expected = torch.zeros(5, 8)
    expected[:, [6, 0, 3, 7]] = x
    for projection in scattered:
        torch.testing.assert_close(projection(x), expected)
    student.config.hf_enhance_student["hidden_channels"] = [0, 1, 9, 2]
    with pytest.raises(ValueError, match=r"out-of-range values \[9\]"):
        build_projections(student, teacher, 2)


# ---- arguments and construction errors ----


def test_arguments_parse_from_the_command_line(tmp_path: Path) -> None:
    parser = HfArgumentParser(DistillationTrainingArguments)
    command_line = f"--output_dir {tmp_path} --report_to none --hidden_weight 0.5 --hidden_distance mse"
    (args,) = parser.parse_args_into_dataclasses([*command_line.split(), "--hidden_layer_map", "0", "2", "4"])
    assert (args.hidden_weight, args.hidden_distance, args.hidden_layer_map) == (0.5, "mse", [0, 2, 4])
    (default,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert (default.hidden_weight, default.hidden_distance, default.hidden_layer_map) == (0.0, "cosine", None)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"hidden_weight": -0.1}, r"hidden_weight=-0.1 must be a finite number >= 0"),
        ({"hidden_weight": math.nan}, r"hidden_weight=nan must be a finite number >= 0"),
        ({"hidden_weight": math.inf}, r"hidden_weight=inf must be"),
        ({"hidden_distance": "l1"}, r"Unknown hidden_distance 'l1'. Valid choices: cosine, mse"),
        ({"hidden_layer_map": ["1"]}, r"must be a list of teacher block indices"),
    ],
)
def test_bad_hidden_arguments_fail_at_construction(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


@pytest.mark.parametrize(
    "layer_map,message",
    [
        ([0, 4], r"entries 4 \(student block 1\) point outside .* student has 2 blocks and the teacher 4"),
        ([-1, 3], r"entries -1 \(student block 0\) point outside .* indices must lie in 0..3"),
        ([1], r"has 1 entries \(\[1\]\) but the student has 2 blocks and the teacher 4"),
        ([0, 1, 3], r"has 3 entries .* the student has 2 blocks .* e.g. \[1, 3\]"),
    ],
)
def test_bad_layer_maps_are_refused_at_construction(tmp_path: Path, layer_map: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(
            model=tiny_gpt2(seed=0),
            teacher_model=tiny_gpt2(seed=1, n_layer=4),
            args=make_args(tmp_path, hidden_layer_map=layer_map),
        )


def test_other_misuse_is_refused_at_construction(tmp_path: Path) -> None:
    from hf_enhance import cache_teacher_logits
    from hf_enhance.distillation import TeacherCacheCollator, with_teacher_cache

    train = lm_dataset(4)
    cache = cache_teacher_logits(
        tiny_gpt2(seed=1), train, output_dir=tmp_path / "c", top_k=4, show_progress=False
    )
    with pytest.raises(ValueError, match="teacher_cache= holds only the teacher's top-k"):
        DistillationTrainer(
            model=tiny_gpt2(), teacher_cache=cache, args=make_args(tmp_path), train_dataset=train
        )
    online = DistillationTrainer(model=tiny_gpt2(), teacher_model=tiny_gpt2(seed=1), args=make_args(tmp_path))
    cached_batch = TeacherCacheCollator(pad_collator)(list(with_teacher_cache(train, cache)))
    with pytest.raises(RuntimeError, match="Some mapped teacher blocks did not run"):
        online.compute_loss(online.model, cached_batch)
    with pytest.raises(ValueError, match=r"student \(GRUClassifier\) needs exactly one stack .* has 0: none"):
        DistillationTrainer(
            model=GRUClassifier(),
            teacher_model=tiny_bert_classifier(),
            args=make_args(tmp_path, distillation_task="classification"),
        )
    student = tiny_gpt2(seed=0)
    student.config.hf_enhance_student = {"layers": [0, 7]}
    with pytest.raises(ValueError, match=r"default layer map .* entries 7 \(student block 1\)"):
        DistillationTrainer(
            model=student, teacher_model=tiny_gpt2(seed=1, n_layer=4), args=make_args(tmp_path)
        )
    optimizer = torch.optim.SGD(tiny_gpt2().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"Pass optimizers=\(optimizer, None\)"):
        DistillationTrainer(
            model=tiny_gpt2(seed=0, n_embd=16),
            teacher_model=tiny_gpt2(seed=1),
            args=make_args(tmp_path),
            optimizers=(optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer)),
        )


# ---- the trainer ----


def test_trainer_loss_adds_the_hidden_term_on_the_kd_positions(tmp_path: Path) -> None:
    student, teacher = tiny_gpt2(seed=0, n_embd=16), tiny_gpt2(seed=1, n_layer=4)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, hidden_weight=50.0, hidden_distance="mse", hidden_layer_map=[0, 2]),
    )
    batch = pad_collator(list(lm_dataset(3)))
    batch["labels"][0, 3] = -100  # position 2 of row 0 predicts nothing
    batch["attention_mask"][1, 0] = 0  # position 0 of row 1 is masked out although its next label counts
    loss = trainer.compute_loss(student, batch)

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    kd = distillation_loss(
        student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1], batch["labels"][:, 1:]
    ).loss
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = (batch["labels"][:, 1:] != -100) & batch["attention_mask"][:, :-1].bool()
    assert mask.sum() < (batch["labels"][:, 1:] != -100).sum()
    student_states, teacher_states = block_outputs(student, inputs), block_outputs(teacher, inputs)
    weights = [projection.weight for projection in trainer.hidden_projections]
    hidden = loop_reference(student_states, [teacher_states[0], teacher_states[2]], mask, "mse", weights)
    torch.testing.assert_close(loss - kd, 50.0 * hidden, rtol=1e-4, atol=1e-6)


def test_fused_and_logit_paths_give_the_same_hidden_step_and_log_it(tmp_path: Path) -> None:
    updates = {}
    for fused in (True, False):
        trainer = DistillationTrainer(
            model=tiny_gpt2(seed=0, n_embd=16),
            teacher_model=tiny_gpt2(seed=1, n_layer=4),
            args=make_args(
                tmp_path / str(fused),
                max_steps=1,
                optim="sgd",
                learning_rate=1.0,
                max_grad_norm=0.0,
                fused_loss=fused,
                fused_chunk_size=7,
                eval_strategy="steps",
                eval_steps=1,
                load_best_model_at_end=False,
            ),
            train_dataset=lm_dataset(4),
            eval_dataset=lm_dataset(4, seed=1),
            data_collator=pad_collator,
        )
        before = {**trainer.model.state_dict(), **trainer.hidden_projections.state_dict()}
        before = {name: tensor.detach().clone() for name, tensor in before.items()}
        trainer.train()
        assert trainer._fused is fused
        after = {**trainer.model.state_dict(), **trainer.hidden_projections.state_dict()}
        updates[fused] = {name: before[name] - tensor for name, tensor in after.items()}
        logs = trainer.state.log_history
        assert any("hidden_loss" in log and "kd_loss" in log for log in logs)
        assert any("eval_hidden_loss" in log and "eval_kd_loss" in log for log in logs)
    assert all(updates[True][name].abs().max() > 0 for name in ("0.weight", "1.weight"))
    for name in updates[True]:
        torch.testing.assert_close(updates[True][name], updates[False][name], rtol=1e-5, atol=1e-6, msg=name)


def variable_length_classification(n: int = 8) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=generator))
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": i % 3})
    return Dataset.from_list(rows)


MODELS = {
    "llama": (lambda: tiny_llama(seed=0), lambda: tiny_llama(seed=1, hidden=32, layers=4), lm_dataset),
    # KD counts rows, the hidden term counts tokens: only separate counts keep accumulation exact
    "bert": (
        lambda: tiny_bert_classifier(seed=0, hidden=16),
        lambda: tiny_bert_classifier(seed=1),
        variable_length_classification,
    ),
}


def _trained(tmp_path: Path, kind: str, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    make_student, make_teacher, dataset = MODELS[kind]
    trainer = DistillationTrainer(
        model=make_student(),
        teacher_model=make_teacher(),
        args=make_args(
            tmp_path / f"{batch_size}x{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=0.5,
            hidden_weight=3.0,
            **PLAIN_SGD,
        ),
        train_dataset=dataset(8),
        data_collator=pad_collator,
    )
    trainer.train()
    weights = {f"student.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    weights.update(
        {f"projection.{k}": v.detach() for k, v in trainer.hidden_projections.state_dict().items()}
    )
    return weights


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_gradient_accumulation_stays_exact(tmp_path: Path, kind: str) -> None:
    """Two steps of batch 4 and two steps of 2 accumulated micro-batches of 2 give the same weights."""
    full = _trained(tmp_path, kind, batch_size=4, accumulation=1)
    accumulated = _trained(tmp_path, kind, batch_size=2, accumulation=2)
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-5, atol=1e-5, msg=name)


def test_clipping_covers_the_projections(tmp_path: Path) -> None:
    trainer = DistillationTrainer(
        model=tiny_gpt2(seed=0, n_embd=16),
        teacher_model=tiny_gpt2(seed=1),
        args=make_args(tmp_path, max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=1e-3),
        train_dataset=lm_dataset(4),
        data_collator=pad_collator,
    )
    before = [p.detach().clone() for p in trainer.hidden_projections.parameters()]
    trainer.train()
    moved = [p.detach() - b for p, b in zip(trainer.hidden_projections.parameters(), before, strict=True)]
    assert 0 < torch.linalg.vector_norm(torch.cat([m.flatten() for m in moved])) <= 1e-3 * (1 + 1e-4)


def test_resume_equals_a_straight_run_and_projections_stay_out_of_the_student(tmp_path: Path) -> None:
    def trainer_for(args: DistillationTrainingArguments) -> DistillationTrainer:
        return DistillationTrainer(
            model=tiny_gpt2(seed=0, n_embd=16),
            teacher_model=tiny_gpt2(seed=1, n_layer=4),
            args=args,
            train_dataset=lm_dataset(16),
            data_collator=pad_collator,
        )

    args = make_args(tmp_path, max_steps=4, learning_rate=1e-2, save_strategy="steps", save_steps=2)
    straight = trainer_for(args)
    straight.train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    student_keys = set(straight.model.state_dict())
    assert set(load_file(str(checkpoint / "model.safetensors"))) <= student_keys
    assert set(load_file(str(checkpoint / HIDDEN_PROJECTIONS_NAME))) == {"0.weight", "1.weight"}
    straight.save_model(str(tmp_path / "final"))
    assert set(load_file(str(tmp_path / "final" / "model.safetensors"))) <= student_keys
    assert not any("projection" in path.name for path in (tmp_path / "final").iterdir())

    resumed = trainer_for(args)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name)
    for name, tensor in straight.hidden_projections.state_dict().items():
        torch.testing.assert_close(resumed.hidden_projections.state_dict()[name], tensor, msg=name)


def test_lora_student_hooks_the_base_blocks_and_trains_its_adapters(tmp_path: Path) -> None:
    plain = tiny_gpt2(seed=0, n_embd=16)
    student = get_peft_model(
        copy.deepcopy(plain), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    teacher = tiny_gpt2(seed=1, n_layer=4)
    args = make_args(tmp_path, alpha=1.0, learning_rate=1e-2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(8),
        data_collator=pad_collator,
    )
    assert trainer.hidden_term.student_blocks[0] is student.get_base_model().transformer.h[0]
    reference = DistillationTrainer(model=plain, teacher_model=teacher, args=args)
    batch = pad_collator(list(lm_dataset(4)))
    torch.testing.assert_close(  # LoRA starts as the identity: both see the same blocks, projections and loss
        trainer.compute_loss(student, batch), reference.compute_loss(plain, batch)
    )
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(student.named_parameters())
    assert all(not torch.equal(after[n], p) for n, p in lora_before.items() if "lora_B" in n)
    assert all("hidden_loss" in log for log in trainer.state.log_history if "loss" in log)


# ---- two processes ----


def test_two_processes_train_like_one(tmp_path: Path) -> None:
    single = torchrun_two_processes(
        "tests.distillation.ddp_hidden",
        str(tmp_path),
        timeout=180,
        meanwhile=lambda: ddp_train(tmp_path / "single", per_device_batch=4),  # the same run in one process
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for name, tensor in single.items():
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(ranks[1][name], ranks[0][name]), name
