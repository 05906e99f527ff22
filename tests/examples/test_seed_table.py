"""benchmarks/seed_table.py --quick on a tiny BERT and a few rows of CoLA and SST-2: rows, JSON and curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data import load_sentence_classification
from seed_table import main

from tests.examples.conftest import requires_minilm

FIELDS = {
    "dataset",
    "method",
    "accuracy",
    "mcc",
    "trainable_params",
    "total_params",
    "train_seconds",
    "epochs",
}
METHODS = ["majority", "teacher-full-ft", "lora", "gru", "gru-distilled"]


def quick_flags(tmp_path: Path, data_dir: Path) -> list[str]:
    return [
        "--quick", "--data_dir", str(data_dir), "--max_train_samples", "24", "--max_eval_samples", "16",
        "--teacher_epochs", "1", "--lora_epochs", "1", "--gru_epochs", "2", "--gru_embedding_dim", "16",
        "--gru_hidden_size", "8", "--output", str(tmp_path / "rows.json"), "--curves_dir", str(tmp_path),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip


def test_quick_run_writes_every_row_and_the_curves(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    rows = main(
        ["--model", str(tiny_model_dir), "--tasks", "cola", "sst2", "--augment_copies", "1",
         "--unlabelled_samples", "10", "--gru_batch_size", "8", *quick_flags(tmp_path, data_dir)]
    )  # fmt: skip
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    for task in ("cola", "sst2"):
        table = {row["method"]: row for row in rows if row["dataset"] == task}
        assert list(table) == [*METHODS, "gru-distilled-aug", "gru-distilled-unlabelled"]
        assert all(row.keys() >= FIELDS and row["settings"]["quick"] for row in table.values())
        assert all(0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["mcc"] <= 1.0 for row in table.values())
        labels = np.array(
            load_sentence_classification(task, data_dir, max_eval_samples=16)["validation"]["label"]
        )
        majority = table["majority"]
        assert majority["accuracy"] == pytest.approx(
            (labels == majority["settings"]["label"]).mean(), abs=1e-4
        )
        assert majority["mcc"] == 0.0
        assert table["lora"]["trainable_params"] < table["teacher-full-ft"]["trainable_params"]
        assert table["gru"]["total_params"] == table["gru-distilled"]["total_params"]
        assert table["lora"]["settings"]["batch_size"] == 32
        assert {table[method]["settings"]["batch_size"] for method in table if "gru" in method} == {8}
        for method, batch_size in (("lora", 32), ("gru", 8), ("gru-distilled-aug", 8)):
            states = (tmp_path / "work" / task / method).glob("checkpoint-*/trainer_state.json")
            assert {json.loads(state.read_text())["train_batch_size"] for state in states} == {batch_size}
        assert {"alpha", "temperature", "teacher_cache_seconds"} <= table["gru-distilled"]["settings"].keys()
        # 24 train + 16 validation + 24 perturbed + 10 unlabelled rows cached; each extra row trains on its own.
        assert table["gru-distilled"]["settings"]["teacher_cached_rows"] == 74
        assert table["gru-distilled"]["settings"]["distillation_train_rows"] == 24
        assert table["gru-distilled-aug"]["settings"]["distillation_train_rows"] == 48
        assert table["gru-distilled-unlabelled"]["settings"]["distillation_train_rows"] == 34
        assert all(
            row["epochs"] > 0 and row["train_seconds"] > 0 for row in rows if row["method"] != "majority"
        )
        assert (tmp_path / f"seed_curves_{task}.png").stat().st_size > 10_000


def test_rerunning_one_data_set_keeps_the_rows_of_the_others(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    output = tmp_path / "rows.json"
    sst2_row = {"dataset": "sst2", "method": "gru", "accuracy": 0.5, "settings": {}}
    old_cola_row = {"dataset": "cola", "method": "gru", "accuracy": 0.1, "settings": {}}
    output.write_text(json.dumps([old_cola_row, sst2_row]))
    flags = [*quick_flags(tmp_path, data_dir), "--augment_copies", "0", "--unlabelled_samples", "0"]
    rows = main(["--model", str(tiny_model_dir), "--tasks", "cola", *flags])
    assert [row["method"] for row in rows] == METHODS
    assert json.loads(output.read_text()) == [*rows, sst2_row]


@pytest.mark.parametrize(
    "content", ["{not json", '{"dataset": "cola"}', '[{"method": "gru"}]', '[{"dataset": "mnli"}]']
)
def test_an_output_file_that_is_not_a_table_fails_before_training(
    tmp_path: Path, data_dir: Path, content: str
) -> None:
    (tmp_path / "rows.json").write_text(content)
    with pytest.raises(ValueError, match="Delete it or pass another --output"):
        main(["--tasks", "cola", *quick_flags(tmp_path, data_dir)])
    assert (tmp_path / "rows.json").read_text() == content


def test_unknown_task_fails_before_training(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="Valid tasks: cola, sst2"):
        main(["--tasks", "mnli", *quick_flags(tmp_path, data_dir)])


def test_unlabelled_row_is_left_out_where_the_training_split_has_too_few_spare_rows(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*quick_flags(tmp_path, data_dir), "--augment_copies", "0", "--unlabelled_samples", "9000"]
    rows = main(["--model", str(tiny_model_dir), "--tasks", "cola", *flags])
    assert [row["method"] for row in rows] == METHODS
    assert "cola: no gru-distilled-unlabelled row, only 8527 spare training rows" in capsys.readouterr().out


@requires_minilm
@pytest.mark.slow
def test_quick_run_with_the_real_teacher(tmp_path: Path, data_dir: Path) -> None:
    rows = main(["--tasks", "sst2", *quick_flags(tmp_path, data_dir)])
    lora = next(row for row in rows if row["method"] == "lora")
    assert lora["trainable_params"] / lora["total_params"] < 0.01
