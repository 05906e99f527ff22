"""`student_from_teacher`: exact when nothing is removed, consistent models when something is, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    OPTConfig,
    OPTForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_enhance.students import BLOCK_LAYOUTS, BlockLayout, register_student_layout, student_from_teacher
from tests.students.tiny import CAUSAL, CONFIGS, HEADS, tiny_teacher, token_ids


def outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    from hf_enhance.modeling import repeated_blocks

    (stack,) = repeated_blocks(model).values()
    return stack


@pytest.mark.parametrize("name", list(CONFIGS))
def test_keeping_every_layer_reproduces_the_teacher_exactly(name: str) -> None:
    teacher, ids = tiny_teacher(name), token_ids()
    student = student_from_teacher(teacher)
    assert type(student) is type(teacher)
    assert torch.equal(outputs(student, ids), outputs(teacher, ids))
    assert all(
        s.data_ptr() != t.data_ptr() for s, t in zip(student.parameters(), teacher.parameters(), strict=True)
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pruned_student_reloads_with_identical_outputs_and_records_what_it_kept(
    name: str, tmp_path: Path
) -> None:
    teacher, ids = tiny_teacher(name), token_ids()
    width = {"intermediate_size": 24}
    if name in HEADS:
        width |= {"num_attention_heads": 2, "hidden_size": 24}
    student = student_from_teacher(teacher, num_layers=2, calibration=ids, progress=False, **width)
    config = student.config
    assert config.num_hidden_layers == len(blocks(student)) == 2
    if name in HEADS:
        assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (24, 2, 1)
    student.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if name in CAUSAL else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path)
    assert torch.equal(outputs(reloaded, ids), outputs(student, ids))
    record = json.loads((tmp_path / "config.json").read_text())["hf_enhance_student"]
    assert record["layers"] == config.hf_enhance_student["layers"] and len(record["layers"]) == 2
    assert record["layer_strategy"] == "block_influence" and len(record["layer_scores"]) == 4
    assert record["calibration"] == {"batches": 1, "tokens": ids.numel()}
    assert [len(kept) for kept in record["neurons"]] == [24, 24]
    params = sum(p.numel() for p in student.parameters())
    assert params < sum(p.numel() for p in teacher.parameters())


@pytest.mark.parametrize("name", CAUSAL)
def test_pruned_student_generates_the_same_with_and_without_its_kv_cache(name: str) -> None:
    teacher, ids = tiny_teacher(name), token_ids(batch=2, length=6)
    width = {"num_attention_heads": 2, "hidden_size": 24} if name in HEADS else {"intermediate_size": 24}
    student = student_from_teacher(teacher, layers=[3, 1], calibration=ids, progress=False, **width)
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    cached = student.generate(ids, use_cache=True, **settings)
    uncached = student.generate(ids, use_cache=False, **settings)
    assert cached.shape == (2, 14) and torch.equal(cached, uncached)


def test_explicit_layers_are_kept_in_the_given_order() -> None:
    teacher = tiny_teacher("llama")
    student = student_from_teacher(teacher, layers=[3, 0])
    for new, old in enumerate([3, 0]):
        theirs, ours = blocks(teacher)[old].state_dict(), blocks(student)[new].state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert student.config.hf_enhance_student["layer_strategy"] == "given"


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "gemma3_text"])
def test_per_layer_config_lists_follow_the_kept_layers(name: str) -> None:
    teacher = tiny_teacher(name)
    student = student_from_teacher(teacher, layers=[0, 2, 3])
    expected = [teacher.config.layer_types[index] for index in (0, 2, 3)]
    assert student.config.layer_types == expected
    attention = [block.self_attn for block in blocks(student)]
    assert [module.layer_idx for module in attention] == [0, 1, 2]
    sliding = [getattr(module, "sliding_window", None) is not None for module in attention]
    assert sliding == [kind == "sliding_attention" for kind in expected]


def test_uniform_keeps_evenly_spaced_layers_with_the_first_and_last() -> None:
    teacher = tiny_teacher("llama")
    three = student_from_teacher(teacher, num_layers=3, layer_strategy="uniform")
    assert three.config.hf_enhance_student["layers"] == [0, 2, 3]
    record = student_from_teacher(teacher, num_layers=2, layer_strategy="uniform").config.hf_enhance_student
    assert record["layers"] == [0, 3] and record["calibration"] is None


def silence(teacher: torch.nn.Module, layer: int) -> None:
    """Make a block an identity: zero what its attention and MLP write into the residual stream."""
    block = blocks(teacher)[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("strategy", ["block_influence", "skip_divergence", "iterative_skip"])
def test_data_driven_strategies_drop_layers_that_do_nothing(strategy: str) -> None:
    teacher, ids = tiny_teacher("llama"), token_ids()
    silence(teacher, 1)
    silence(teacher, 2)
    student = student_from_teacher(
        teacher, num_layers=2, layer_strategy=strategy, calibration=ids, progress=False
    )
    assert student.config.hf_enhance_student["layers"] == [0, 3]
    assert torch.allclose(outputs(student, ids), outputs(teacher, ids), atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2"])
def test_neurons_that_write_nothing_are_the_ones_pruned(name: str) -> None:
    teacher, ids = tiny_teacher(name), token_ids()
    dead = torch.arange(0, 48, 2)  # half of the 48 neurons of every layer
    with torch.no_grad():
        for block in blocks(teacher):
            if name == "gpt2":
                block.mlp.c_proj.weight[dead] = 0  # Conv1D: [in, out]
            else:
                block.mlp.down_proj.weight[:, dead] = 0
    student = student_from_teacher(teacher, intermediate_size=24, calibration=ids, progress=False)
    assert all(kept == list(range(1, 48, 2)) for kept in student.config.hf_enhance_student["neurons"])
    assert torch.allclose(outputs(student, ids), outputs(teacher, ids), atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_key_value_groups_that_write_nothing_are_the_ones_pruned(name: str) -> None:
    teacher, ids = tiny_teacher(name), token_ids()
    with torch.no_grad():
        for block in blocks(teacher):
            block.self_attn.o_proj.weight[:, :16] = 0  # query heads 0 and 1: key/value group 0
    student = student_from_teacher(teacher, num_attention_heads=2, calibration=ids, progress=False)
    assert student.config.hf_enhance_student["kv_groups"] == [[1]] * 4
    assert torch.allclose(outputs(student, ids), outputs(teacher, ids), atol=1e-5)


def test_padded_tokens_do_not_count_in_calibration() -> None:
    teacher = tiny_teacher("llama")
    short, long = token_ids(1, 6, seed=2), token_ids(1, 10, seed=3)
    padded = torch.cat([torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], 1), long])
    mask = torch.cat([torch.tensor([[1] * 6 + [0] * 4]), torch.ones(1, 10, dtype=torch.long)])
    separate = [{"input_ids": short}, {"input_ids": long}]
    together = Dataset.from_dict({"input_ids": padded.tolist(), "attention_mask": mask.tolist()})

    def record(data: object) -> dict:
        return student_from_teacher(
            teacher, intermediate_size=24, calibration=data, progress=False
        ).config.hf_enhance_student

    one, two = record(separate), record(together)
    assert one["calibration"]["tokens"] == two["calibration"]["tokens"] == 16
    assert one["block_influence"] == pytest.approx(two["block_influence"], rel=1e-4)
    assert one["neurons"] == two["neurons"]


def test_a_registered_layout_enables_width_pruning_of_a_new_architecture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher = OPTForCausalLM(
        OPTConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            ffn_dim=48,
            vocab_size=64,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        )
    ).eval()
    ids = token_ids()
    with pytest.raises(ValueError, match=r"'opt'.*register_student_layout"):
        student_from_teacher(teacher, intermediate_size=24, calibration=ids, progress=False)
    assert student_from_teacher(teacher, layers=[1]).config.num_hidden_layers == 1  # depth needs no layout
    monkeypatch.setattr("hf_enhance.students.layouts.BLOCK_LAYOUTS", dict(BLOCK_LAYOUTS))
    register_student_layout("opt", BlockLayout(mlp_in=("fc1",), mlp_out="fc2", intermediate_attr="ffn_dim"))
    student = student_from_teacher(teacher, intermediate_size=24, calibration=ids, progress=False)
    assert student.config.ffn_dim == 24 and outputs(student, ids).shape == (4, 12, 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [0, 4]}, r"indices \[4\] outside the teacher's 4 layers"),
        ({"layers": [-1]}, r"indices \[-1\] outside"),
        ({"layers": [1, 1]}, r"repeats \[1\]"),
        ({"layers": []}, "keeps no layer"),
        ({"num_layers": 0}, r"num_layers=0 must be an integer in \[1, 4\]"),
        ({"num_layers": 5}, r"num_layers=5 must be"),
        ({"layers": [0], "num_layers": 1}, "not both"),
        ({"num_layers": 2, "layer_strategy": "random"}, "Valid choices: uniform, block_influence"),
        ({"num_attention_heads": 3}, r"does not divide into the teacher's key/value groups.*multiple of 2"),
        ({"intermediate_size": 100}, r"intermediate_size=100 must be an integer in \[1, 48\]"),
        ({"hidden_size": 0}, r"hidden_size=0"),
        ({"num_layers": 2}, "none was given"),
        (
            {"intermediate_size": 8, "calibration": torch.zeros(0, 5, dtype=torch.long)},
            "calibration data is empty",
        ),
        ({"intermediate_size": 8, "calibration": torch.zeros(2, 5)}, "expected token ids"),
        (
            {"intermediate_size": 8, "calibration": Dataset.from_dict({"text": ["a"]})},
            "no 'input_ids' column",
        ),
        ({"intermediate_size": 8, "calibration": "some text"}, "pass a .*tensor of token ids"),
    ],
)
def test_bad_requests_fail_before_any_work(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        student_from_teacher(tiny_teacher("llama"), progress=False, **kwargs)


def test_heads_of_gpt2_cannot_be_pruned_and_the_message_says_what_can() -> None:
    with pytest.raises(ValueError, match=r"'gpt2'.*hidden_size / heads.*intermediate_size"):
        student_from_teacher(tiny_teacher("gpt2"), num_attention_heads=2, calibration=token_ids())


def test_teachers_it_cannot_handle_are_named() -> None:
    peft_model = get_peft_model(tiny_teacher("llama"), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="PEFT model: merge or unwrap it first"):
        student_from_teacher(peft_model)
    t5 = T5ForConditionalGeneration(
        T5Config(
            num_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=64, vocab_size=64, decoder_start_token_id=0
        )
    )
    with pytest.raises(ValueError, match=r"'t5'.*encoder-decoders are not supported"):
        student_from_teacher(t5, layers=[0])
