"""The shared GLUE-style loader: real CoLA/SST-2 files, subsets, and clear errors on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import data as data_module
import pytest
from data import DataNotFound, find_data_dir, load_sentence_classification, perturbed_sentences, tokenize
from transformers import AutoTokenizer


def test_cola_and_sst2_load_with_their_published_sizes(data_dir: Path) -> None:
    cola = load_sentence_classification("cola", data_dir)
    assert (len(cola["train"]), len(cola["validation"])) == (8551, 527)
    assert sum(cola["train"]["label"]) == 6023  # acceptable sentences (SOURCES.md: 2528 / 6023)
    assert cola["train"][0]["sentence"].startswith("Our friends won't buy this analysis")
    sst2 = load_sentence_classification("sst2", data_dir)
    assert (len(sst2["train"]), len(sst2["validation"])) == (60614, 872)
    assert sst2["validation"].features["label"].names == ["negative", "positive"]


def test_subsets_are_seeded_random_samples(data_dir: Path) -> None:
    first = load_sentence_classification("cola", data_dir, max_train_samples=50, max_eval_samples=20, seed=1)
    again = load_sentence_classification("cola", data_dir, max_train_samples=50, max_eval_samples=20, seed=1)
    other = load_sentence_classification("cola", data_dir, max_train_samples=50, seed=2)
    assert (len(first["train"]), len(first["validation"])) == (50, 20)
    assert first["train"]["sentence"] == again["train"]["sentence"]
    assert first["train"]["sentence"] != other["train"]["sentence"]


def test_unlabelled_split_is_disjoint_from_train_and_has_no_labels(data_dir: Path) -> None:
    plain = load_sentence_classification("cola", data_dir, max_train_samples=50, seed=3)
    data = load_sentence_classification("cola", data_dir, max_train_samples=50, unlabelled_samples=30, seed=3)
    assert data["train"]["sentence"] == plain["train"]["sentence"]
    assert data["unlabelled"].column_names == ["sentence"] and len(data["unlabelled"]) == 30
    assert not set(data["unlabelled"]["sentence"]) & set(data["train"]["sentence"])


def test_unlabelled_split_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs max_train_samples"):
        load_sentence_classification("cola", data_dir, unlabelled_samples=5)
    with pytest.raises(ValueError, match="only 551 sentences beyond"):
        load_sentence_classification("cola", data_dir, max_train_samples=8000, unlabelled_samples=600)


def test_tokenize_keeps_labels_and_truncates(tiny_model_dir: Path, data_dir: Path) -> None:
    data = load_sentence_classification("sst2", data_dir, max_train_samples=8, max_eval_samples=8)
    tokenized = tokenize(data, AutoTokenizer.from_pretrained(tiny_model_dir), max_length=6)
    assert "sentence" not in tokenized["train"].column_names
    assert tokenized["train"]["label"] == data["train"]["label"]
    assert max(len(ids) for ids in tokenized["validation"]["input_ids"]) == 6


def test_bad_task_missing_files_and_malformed_rows_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Valid tasks: cola, sst2"):
        load_sentence_classification("mnli", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_sentence_classification("cola", tmp_path)
    with pytest.raises(ValueError, match="max_train_samples must be a positive"):
        load_sentence_classification("cola", tmp_path, max_train_samples=0)
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\tpositive\n")
    (tmp_path / "sst2" / "test.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match="line 3"):
        load_sentence_classification("sst2", tmp_path)


def write_sst2(folder: Path, sentence: str) -> Path:
    (folder / "sst2").mkdir(parents=True)
    (folder / "sst2" / "train.tsv").write_text(f"sentence\tlabel\n{sentence}\t1\nbad film\t0\n")
    (folder / "sst2" / "test.tsv").write_text("sentence\tlabel\nfine\t1\n")
    return folder


def test_data_are_found_in_the_given_folder_then_the_environment_then_beside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, named, beside = (write_sst2(tmp_path / name, name) for name in ("given", "named", "beside"))
    monkeypatch.setattr(data_module, "BESIDE_REPOSITORY", beside)
    monkeypatch.delenv("HF_ENHANCE_DATA", raising=False)
    assert load_sentence_classification("sst2")["train"]["sentence"][0] == "beside"
    monkeypatch.setenv("HF_ENHANCE_DATA", str(named))
    assert load_sentence_classification("sst2")["train"]["sentence"][0] == "named"
    assert load_sentence_classification("sst2", given)["train"]["sentence"][0] == "given"


def test_no_data_and_no_hub_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "BESIDE_REPOSITORY", tmp_path / "nothing_here")
    monkeypatch.setenv("HF_ENHANCE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFound, match="Pass --data_dir DIR, set HF_ENHANCE_DATA=DIR") as error:
        load_sentence_classification("cola")
    assert str(tmp_path / "empty") in str(error.value) and "nothing_here" in str(error.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert find_data_dir("cola") is None  # online: the hub's nyu-mll/glue is next


def test_a_script_without_its_data_exits_with_one_line_before_loading_a_model(tmp_path: Path) -> None:
    script = Path(data_module.__file__).parent / "lora_classification.py"
    result = subprocess.run(
        [sys.executable, str(script), "--task", "cola", "--data_dir", str(tmp_path), "--model", "no/such-model"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --data_dir {tmp_path} has no cola/")


def test_perturbed_sentences_mask_swap_and_cut_reproducibly() -> None:
    sentences = ["the cat sat on the mat today", "a dog barked"]
    assert perturbed_sentences(sentences, 0, "[MASK]") == []
    unchanged = perturbed_sentences(sentences, 2, "[MASK]", p_mask=0.0, p_swap=0.0, p_ngram=0.0)
    assert unchanged == sentences * 2
    masked = perturbed_sentences(sentences, 1, "[MASK]", p_mask=1.0, p_swap=0.0, p_ngram=0.0)
    assert masked == ["[MASK] " * 6 + "[MASK]", "[MASK] [MASK] [MASK]"]
    swapped = perturbed_sentences(["a b"], 1, "[MASK]", p_mask=0.0, p_swap=1.0, p_ngram=0.0)
    assert swapped == ["b a"]
    cut = perturbed_sentences(sentences, 3, "[MASK]", p_mask=0.0, p_swap=0.0, p_ngram=1.0, seed=1)
    assert all(1 <= len(s.split()) <= 5 and s in sentences[i % 2] for i, s in enumerate(cut))
    assert perturbed_sentences(sentences, 2, "[MASK]", seed=3) == perturbed_sentences(
        sentences, 2, "[MASK]", seed=3
    )
    with pytest.raises(ValueError, match="p_swap is a probability"):
        perturbed_sentences(sentences, 1, "[MASK]", p_swap=1.5)
