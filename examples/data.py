"""Sentence-classification data for the examples and benchmarks: CoLA and SST-2, offline or from the hub.

Where the data come from (`find_data_dir`): ``data_dir`` when given; else the folder named by the environment
variable ``HF_ENHANCE_DATA``; else ``shared/data`` beside the repository (``../shared/data`` from its root); else,
when the hub is not switched off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``), ``nyu-mll/glue`` through
`datasets.load_dataset`; else a `DataNotFound` error that says where it looked. ``from_hub=True`` always loads
from the hub. Either way the result is a `DatasetDict` with ``train`` and ``validation`` splits and columns
``sentence`` (str), ``label`` (int). Local files use the GLUE-style tab-separated layouts below.

- CoLA: ``cola/raw/in_domain_train.tsv`` / ``in_domain_dev.tsv``, no header; columns: source, label,
  original-label marker, sentence.
- SST-2: ``sst2/train.tsv`` and ``sst2/test.tsv`` (GLUE's labelled dev set, used for validation), header
  ``sentence<TAB>label``.
"""

from __future__ import annotations

import csv
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


DATA_ENV = "HF_ENHANCE_DATA"
BESIDE_REPOSITORY = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class DataNotFound(FileNotFoundError):
    """No folder holds the task's files and the hub is switched off (or a given folder lacks them)."""


def has_task_files(folder: Path, files: TaskFiles) -> bool:
    return (folder / files.train).is_file() and (folder / files.validation).is_file()


def hub_switched_off() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENV)


def find_data_dir(task: str, data_dir: str | Path | None = None) -> Path | None:
    """The folder holding ``task``'s files, or None when the hub is to be used (see the module docstring).

    Raises `DataNotFound` (one message: where it looked and the three ways to fix it) when ``data_dir`` is given
    but lacks the files, or when no folder has them and the hub is switched off; before anything is loaded.
    """
    files = _check_task(task)
    if data_dir is not None:
        if has_task_files(Path(data_dir), files):
            return Path(data_dir)
        raise DataNotFound(
            f"--data_dir {data_dir} has no {files.train} and {files.validation}: point it at the folder that "
            f"holds {task}/ (GLUE tab-separated files), or leave it out to use ${DATA_ENV}, ../shared/data or the hub."
        )
    candidates = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    candidates.append(BESIDE_REPOSITORY)
    for folder in candidates:
        if has_task_files(folder, files):
            return folder
    if hub_switched_off():
        looked = ", ".join(str(folder) for folder in candidates)
        raise DataNotFound(
            f"The {task} files ({files.train}) are in none of {looked}, and the hub is switched off "
            f"({' / '.join(OFFLINE_ENV)}). Pass --data_dir DIR, set {DATA_ENV}=DIR (DIR holds {task}/), or allow "
            "the hub so that nyu-mll/glue is downloaded."
        )
    return None


@contextmanager
def exit_on_missing_data() -> Iterator[None]:
    """For a script's ``__main__``: `DataNotFound` ends the run with its one-line message, not a traceback."""
    try:
        yield
    except DataNotFound as error:
        sys.exit(f"error: {error}")


def _check_task(task: str) -> TaskFiles:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[task]


def _read_tsv(path: Path, files: TaskFiles) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Point data_dir at the folder holding cola/ and sst2/, or load from the hub "
            "with from_hub=True."
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
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Folder holding cola/ and sst2/ (GLUE tsv files). Default: ${DATA_ENV}, else "
            "../shared/data beside the repository, else nyu-mll/glue from the hub (online)."
        },
    )
    from_hub: bool = field(default=False, metadata={"help": "Load nyu-mll/glue with datasets (online)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Random subset of the train split."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Random subset of the validation split."}
    )
    max_length: int = field(default=128, metadata={"help": "Truncate sentences to this many tokens."})


def load_sentence_classification(
    task: str,
    data_dir: str | Path | None = None,
    *,
    from_hub: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    unlabelled_samples: int = 0,
    seed: int = 0,
) -> DatasetDict:
    """``train`` and ``validation`` splits of ``task`` (``"cola"`` or ``"sst2"``) with ``sentence`` and ``label``.

    ``data_dir`` and ``from_hub``: where the files are read from, as `find_data_dir` says (None: found).
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
    root = None if from_hub else find_data_dir(task, data_dir)
    if root is None:
        if not from_hub:
            print(
                f"No local {task} files ({DATA_ENV} unset, none at {BESIDE_REPOSITORY}): loading nyu-mll/glue."
            )
        data = load_dataset("nyu-mll/glue", task)
        data = DatasetDict(
            {split: data[split].select_columns(["sentence", "label"]) for split in ("train", "validation")}
        )
    else:
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
