"""Sentence-classification data for the examples and benchmarks: CoLA and SST-2, offline or from the hub.

Local files (the default, ``../shared/data`` from the repository root) use the GLUE-style tab-separated
layouts below; ``from_hub=True`` loads ``nyu-mll/glue`` with `datasets` instead (needs internet). Either way the
result is a `DatasetDict` with ``train`` and ``validation`` splits and columns ``sentence`` (str), ``label`` (int).

- CoLA: ``cola/raw/in_domain_train.tsv`` / ``in_domain_dev.tsv``, no header; columns: source, label,
  original-label marker, sentence.
- SST-2: ``sst2/train.tsv`` and ``sst2/test.tsv`` (GLUE's labelled dev set, used for validation), header
  ``sentence<TAB>label``.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TaskFiles:
    train: str
    validation: str
    sentence_column: int
    label_column: int
    num_columns: int
    has_header: bool
    label_names: tuple[str, ...]


TASKS: dict[str, TaskFiles] = {
    "cola": TaskFiles(
        "cola/raw/in_domain_train.tsv",
        "cola/raw/in_domain_dev.tsv",
        3,
        1,
        4,
        False,
        ("unacceptable", "acceptable"),
    ),
    "sst2": TaskFiles("sst2/train.tsv", "sst2/test.tsv", 0, 1, 2, True, ("negative", "positive")),
}


def _check_task(task: str) -> TaskFiles:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[task]


def _read_tsv(path: Path, files: TaskFiles) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Point data_dir at the folder holding cola/ and sst2/ (the repository "
            "expects ../shared/data, relative to the repository root), or load from the hub with from_hub=True."
        )
    sentences, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line, row in enumerate(rows, start=1):
            if files.has_header and line == 1:
                continue
            label = row[files.label_column].strip() if len(row) == files.num_columns else None
            if label not in ("0", "1"):
                raise ValueError(
                    f"{path}, line {line}: expected {files.num_columns} tab-separated columns with a 0/1 label in "
                    f"column {files.label_column + 1}, got {row!r}. The file is not in the GLUE layout this loader "
                    "reads; check that data_dir points at the original files."
                )
            sentences.append(row[files.sentence_column].strip())
            labels.append(int(label))
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=list(files.label_names))})
    return Dataset.from_dict({"sentence": sentences, "label": labels}, features=features)


@dataclass
class DataArguments:
    """Which sentence-classification data an example reads (the fields both example scripts share)."""

    task: str = field(default="sst2", metadata={"help": "Data set.", "choices": list(TASKS)})
    data_dir: str = field(
        default="../shared/data", metadata={"help": "Folder holding cola/ and sst2/ (GLUE tsv files)."}
    )
    from_hub: bool = field(
        default=False, metadata={"help": "Load nyu-mll/glue with datasets instead (online)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Random subset of the train split."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Random subset of the validation split."}
    )
    max_length: int = field(default=128, metadata={"help": "Truncate sentences to this many tokens."})


def load_sentence_classification(
    task: str,
    data_dir: str | Path = "../shared/data",
    *,
    from_hub: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    unlabelled_samples: int = 0,
    seed: int = 0,
) -> DatasetDict:
    """``train`` and ``validation`` splits of ``task`` (``"cola"`` or ``"sst2"``) with ``sentence`` and ``label``.

    ``max_train_samples`` / ``max_eval_samples`` keep a random subset (drawn with ``seed``) of that many rows.
    ``unlabelled_samples`` > 0 adds an ``unlabelled`` split: that many further training sentences, disjoint from
    ``train``, with their labels dropped (text a teacher can label for distillation).
    """
    files = _check_task(task)
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of rows or None (all rows), got {value}.")
    if unlabelled_samples < 0 or (unlabelled_samples and max_train_samples is None):
        raise ValueError(
            f"unlabelled_samples={unlabelled_samples} needs max_train_samples set and must be >= 0: the "
            "unlabelled sentences are training sentences left out of the labelled subset. Set "
            "max_train_samples, or unlabelled_samples=0."
        )
    if from_hub:
        data = load_dataset("nyu-mll/glue", task)
        data = DatasetDict(
            {split: data[split].select_columns(["sentence", "label"]) for split in ("train", "validation")}
        )
    else:
        root = Path(data_dir)
        data = DatasetDict(
            {
                "train": _read_tsv(root / files.train, files),
                "validation": _read_tsv(root / files.validation, files),
            }
        )
    spare = len(data["train"]) - (max_train_samples or 0)
    if unlabelled_samples and unlabelled_samples > spare:
        raise ValueError(
            f"unlabelled_samples={unlabelled_samples} but {task}'s training split has only {max(spare, 0)} "
            f"sentences beyond max_train_samples={max_train_samples}. Lower one of the two."
        )
    shuffled = data["train"].shuffle(seed=seed)
    if unlabelled_samples:
        rest = range(max_train_samples, max_train_samples + unlabelled_samples)  # type: ignore[arg-type]
        data["unlabelled"] = shuffled.select(rest).remove_columns("label")
    for split, limit in (("train", max_train_samples), ("validation", max_eval_samples)):
        if limit is not None and limit < len(data[split]):
            source = shuffled if split == "train" else data[split].shuffle(seed=seed)
            data[split] = source.select(range(limit))
    return data


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> DatasetDict:
    """Token ids (and attention masks) of each sentence, truncated to ``max_length``; the ``label`` is kept.

    No padding here: pad per batch with ``DataCollatorWithPadding(tokenizer)``.
    """
    return data.map(
        lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["sentence"],
        desc="Tokenizing",
    )


def perturbed_sentences(
    sentences: list[str],
    copies: int,
    mask_token: str,
    *,
    p_mask: float = 0.1,
    p_swap: float = 0.1,
    p_ngram: float = 0.25,
    seed: int = 0,
) -> list[str]:
    """``copies`` randomly perturbed versions of each sentence: unlabelled text for a teacher to label.

    The transfer-set augmentation of Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into
    Simple Neural Networks"), on words: each word is replaced by ``mask_token`` with probability ``p_mask`` or
    swapped with its neighbour with probability ``p_swap``; with probability ``p_ngram`` only a random n-gram
    (n = 1..5) of the result is kept. The teacher's outputs on such near-miss sentences show the student how the
    label reacts to small changes, which the original sentences alone do not.
    """
    for name, value in (("p_mask", p_mask), ("p_swap", p_swap), ("p_ngram", p_ngram)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is a probability and must be in [0, 1], got {value}.")
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}.")
    rng = random.Random(seed)
    augmented = []
    for _ in range(copies):
        for sentence in sentences:
            words = [mask_token if rng.random() < p_mask else word for word in sentence.split()]
            for index in range(len(words) - 1):
                if rng.random() < p_swap:
                    words[index], words[index + 1] = words[index + 1], words[index]
            if words and rng.random() < p_ngram:
                size = rng.randint(1, min(5, len(words)))
                start = rng.randint(0, len(words) - size)
                words = words[start : start + size]
            augmented.append(" ".join(words) or mask_token)
    return augmented
