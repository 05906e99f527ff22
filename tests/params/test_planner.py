"""plan_distillation_memory / hf-enhance plan: per-GPU memory of teacher + student per set-up."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from hf_enhance import cache_teacher_logits, count_parameters
from hf_enhance.cli import main
from hf_enhance.params import MemoryPlan, plan_distillation_memory, worked_example, zoo_config
from hf_enhance.params.planner import cache_bytes_per_token
from tests.tiny import lm_dataset, tiny_gpt2

GIB = 2**30
GPT2_VOCAB = 50257
GPT2_HIDDEN = 768
# One GPT-2 block (gpt2 and distilgpt2 share it): ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj.
GPT2_BLOCK = (
    2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)
)
# Outside GPT-2's blocks: wte (tied to the LM head), wpe and ln_f.
GPT2_OUTSIDE = GPT2_VOCAB * 768 + 1024 * 768 + 2 * 768


@pytest.fixture(scope="module")
def gpt2_plan() -> MemoryPlan:
    return plan_distillation_memory("gpt2", "distilgpt2", gpus=4, gpu_memory_gib=1.0, tokens_per_gpu=1024)


def test_fsdp2_divides_the_teacher_weights_and_student_states_by_n(gpt2_plan: MemoryPlan) -> None:
    teacher_weights = count_parameters("gpt2", method="full").memory("bf16").weights
    student_states = count_parameters("distilgpt2", method="full").memory("bf16").total
    replicated, fsdp2 = gpt2_plan.setup("replicated"), gpt2_plan.setup("fsdp2")
    assert replicated.teacher_weights == teacher_weights
    assert (
        replicated.student_states == student_states == 8 * 81_912_576
    )  # bf16 weights, grads, 2 AdamW states
    assert fsdp2.teacher_weights == math.ceil(teacher_weights / 4)
    assert fsdp2.student_states == math.ceil(student_states / 4)
    assert gpt2_plan.setup("zero3").teacher_weights == fsdp2.teacher_weights
    assert gpt2_plan.setup("offline_cache").teacher_weights == 0


def test_gathered_parameters_by_hand(gpt2_plan: MemoryPlan) -> None:
    assert GPT2_BLOCK == 7_087_872 and GPT2_OUTSIDE == 124_439_808 - 12 * GPT2_BLOCK
    # Teacher and student blocks twice each (prefetch), the teacher's root unit (everything outside its
    # blocks) and what the student keeps gathered from forward to backward (its embedding is tied: all of
    # it outside the blocks), in bf16.
    assert gpt2_plan.setup("fsdp2").gathered == 2 * (
        2 * GPT2_BLOCK + GPT2_OUTSIDE + 2 * GPT2_BLOCK + GPT2_OUTSIDE
    )
    # ZeRO-3: stage3_max_live_parameters (1e9) capped at the larger model, in bf16.
    assert gpt2_plan.setup("zero3").gathered == 2 * 124_439_808
    assert gpt2_plan.setup("replicated").gathered == gpt2_plan.setup("offline_cache").gathered == 0


def test_loss_buffers_by_hand(gpt2_plan: MemoryPlan) -> None:
    def fused(vocab: int, rows: int) -> int:
        chunks = (
            5 * min(1024, rows) * vocab * 4
        )  # the trainer's chunk on a GPU for GPT-2's vocabulary: 1024 tokens
        head_gradient = vocab * GPT2_HIDDEN * 4
        hidden_rows = rows * 3 * GPT2_HIDDEN * 2  # both hidden states + the student's gradient, bf16
        return chunks + head_gradient + hidden_rows

    assert gpt2_plan.setup("replicated").loss_buffers == fused(GPT2_VOCAB, 1024)
    assert gpt2_plan.setup("zero3").loss_buffers == fused(GPT2_VOCAB, 1024)
    # Vocabulary-parallel: ceil(V / N) head rows per rank, the tokens of all 4 ranks.
    assert gpt2_plan.setup("fsdp2").loss_buffers == fused(12565, 4 * 1024)
    # Cached teacher: the student's bf16 logits and two float32 [tokens, V] buffers.
    assert gpt2_plan.setup("offline_cache").loss_buffers == 1024 * GPT2_VOCAB * (2 + 4 + 4)


def test_totals_and_fits(gpt2_plan: MemoryPlan) -> None:
    for row in gpt2_plan.setups:
        assert row.total == row.student_states + row.teacher_weights + row.gathered + row.loss_buffers
        assert row.fits == (row.total <= GIB)
    assert [row.name for row in gpt2_plan.setups] == ["replicated", "fsdp2", "zero3", "offline_cache"]


@pytest.mark.parametrize("gpus", [2, 8])
def test_replicated_needs_more_per_gpu_than_fsdp2(gpus: int) -> None:
    plan = plan_distillation_memory("gpt2-medium", "gpt2", gpus=gpus)
    assert plan.setup("replicated").total > plan.setup("fsdp2").total
    assert plan.setup("replicated").total > plan.setup("zero3").total


def test_llama_3_70b_into_8b_on_8x80gb() -> None:
    plan = plan_distillation_memory("llama-3-70b", "llama-3-8b", gpus=8, gpu_memory_gib=80)
    assert plan.teacher_parameters == 70_553_706_496 and plan.student_parameters == 8_030_261_248
    replicated, fsdp2 = plan.setup("replicated"), plan.setup("fsdp2")
    assert not replicated.fits and replicated.teacher_weights > 80 * GIB  # 141 GB of bf16 teacher weights
    assert fsdp2.fits and fsdp2.total < 40 * GIB
    assert plan.setup("zero3").fits
    # By hand: Llama decoder blocks (attention with 8 kv heads, SwiGLU MLP, two RMSNorms).
    block_70b = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    block_8b = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    teacher_root = 128_256 * 8192  # the untied embedding, gathered for its lookup; the head is never gathered
    student_kept = 128_256 * 4096 + 4096  # head and final norm; its untied embedding is resharded
    assert fsdp2.gathered == 2 * (2 * block_70b + teacher_root + 2 * block_8b + student_kept)
    # ZeRO-3: the two heads the fused objective gathers together (1.58e9 parameters), above both
    # stage3_max_live_parameters and the 70B embedding that DeepSpeed gathers whole (1.05e9).
    assert plan.setup("zero3").gathered == 2 * 128_256 * (8192 + 4096)
    # No teacher on the GPUs, but the 8B student's 64 GB of bf16 states on each: fits, with little headroom.
    assert plan.setup("offline_cache").fits and plan.setup("offline_cache").total > 60 * GIB


def test_cache_disk_size_by_hand() -> None:
    # GPT-2's 50,257 ids fit in uint16: per token 4 ids x 2 B + 4 float16 log-probs x 2 B + float32 residual.
    plan = plan_distillation_memory("gpt2", "distilgpt2", gpus=1, cache_tokens=1000, top_k=4)
    assert plan.cache_bytes_per_token == 4 * 2 + 4 * 2 + 4 == 20
    assert plan.setup("offline_cache").cache_disk_bytes == 20_000
    assert all(row.cache_disk_bytes is None for row in plan.setups if row.name != "offline_cache")
    # Llama 3's 128,256 ids need int32: 32 x 4 + 32 x 2 + 4.
    assert cache_bytes_per_token(128_256, 32) == 196
    no_tokens = plan_distillation_memory("gpt2", "distilgpt2", gpus=1)
    assert no_tokens.setup("offline_cache").cache_disk_bytes is None


def test_cache_size_matches_a_real_cache(tmp_path: Path) -> None:
    """Real models are accepted too, and a cache written by cache_teacher_logits costs the planned bytes per
    token plus a little Arrow bookkeeping per row."""
    teacher = tiny_gpt2(seed=1).eval()
    plan = plan_distillation_memory(teacher, tiny_gpt2(n_embd=16), gpus=2, cache_tokens=0, top_k=8)
    assert plan.teacher == plan.student == "GPT2LMHeadModel"
    cache = cache_teacher_logits(
        teacher, lm_dataset(16, min_len=60, max_len=64), output_dir=tmp_path, top_k=8, show_progress=False
    )
    assert plan.cache_bytes_per_token <= cache.bytes_per_token < plan.cache_bytes_per_token + 12


def test_configs_and_config_paths_give_the_zoo_plan(tmp_path: Path) -> None:
    zoo_config("gpt2").save_pretrained(tmp_path)
    by_path = plan_distillation_memory(tmp_path, zoo_config("distilgpt2"), gpus=2)
    by_name = plan_distillation_memory("gpt2", "distilgpt2", gpus=2)
    assert by_path.setups == by_name.setups
    assert by_path.teacher == str(tmp_path) and by_path.student == "GPT2LMHeadModel"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"gpus": 0}, r"gpus=0 must be an int >= 1"),
        ({"gpus": 2, "gpu_memory_gib": 0}, r"gpu_memory_gib=0 must be a positive, finite number of GiB"),
        ({"gpus": 2, "gpu_memory_gib": -80.0}, r"gpu_memory_gib=-80.0 must be a positive"),
        ({"gpus": 2, "gpu_memory_gib": float("nan")}, r"gpu_memory_gib=nan must be a positive"),
        ({"gpus": 2, "tokens_per_gpu": 0}, r"tokens_per_gpu=0 must be an int >= 1"),
        ({"gpus": 2, "chunk_size": 0}, r"chunk_size=0 must be an int >= 1"),
        ({"gpus": 2, "top_k": 0}, r"top_k=0 must be an int >= 1"),
        ({"gpus": 2, "top_k": GPT2_VOCAB + 1}, r"top_k=50258 exceeds the vocabulary of 50257 ids"),
        ({"gpus": 2, "cache_tokens": -1}, r"cache_tokens=-1 must be an int >= 0"),
    ],
)
def test_bad_arguments_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_distillation_memory("gpt2", "distilgpt2", **kwargs)


def test_different_vocabularies_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"128256 vocabulary rows, the student's 49152: .* same vocabulary"):
        plan_distillation_memory("llama-3-8b", "smollm2-135m", gpus=2)


def test_unknown_names_are_an_error_listing_the_zoo() -> None:
    with pytest.raises(ValueError, match=r"The student is neither .* Valid names: distilgpt2, gpt2"):
        plan_distillation_memory("gpt2", "gpt5", gpus=2)


def test_a_model_without_lm_head_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"teacher \(ModuleDict\) has no output embeddings"):
        plan_distillation_memory(worked_example(), "gpt2", gpus=2)


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--teacher", "gpt2", "--student", "distilgpt2", "--gpus", "4", "--gpu-memory", "1"]
    assert main([*argv, "--tokens-per-gpu", "1024", "--tokens", "1e6", "--top-k", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "gpt2 teacher (124,439,808 parameters) -> distilgpt2 student (81,912,576) on 4 GPUs"
    )
    assert "setup           student states" in out and "total per GPU   fits" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[4:8]}
    assert list(rows) == ["replicated", "fsdp2", "zero3", "offline_cache"]
    assert rows["replicated"][-1] == "no" and rows["fsdp2"][-1] == "yes"
    assert "20 B per token (top-4 uint16 ids" in out and "19.1 MiB for 1,000,000 training tokens" in out
    assert "Not included: activations" in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--teacher", "gpt2", "--student", "distilgpt2", "--gpus", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = plan_distillation_memory("gpt2", "distilgpt2", gpus=4).to_dict()
    assert result == expected
    assert [row["name"] for row in result["setups"]] == ["replicated", "fsdp2", "zero3", "offline_cache"]
    assert result["gpu_memory_bytes"] == 80 * GIB and result["setups"][1]["fits"] is True


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--gpus", "0"], "error: gpus=0 must be an int >= 1"),
        (["--gpus", "2", "--gpu-memory", "-1"], "error: gpu_memory_gib=-1.0 must be a positive"),
        (["--gpus", "2", "--student", "smollm2-135m"], "same vocabulary"),
        (["--gpus", "2", "--student", "gpt5"], "Valid names: distilgpt2"),
    ],
)
def test_cli_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--teacher", "gpt2", "--student", "distilgpt2", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_plan_printed_in_the_docs_is_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "parameters.md").read_text()
    section = page.split("## Distillation memory plan")[1]
    (_, command), (_, shown) = re.findall(r"```(\w*)\n(.*?)\n```", section, re.S)[:2]
    assert main(command.split()[1:]) == 0
    assert capsys.readouterr().out.startswith(shown + "\n")
