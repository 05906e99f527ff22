"""examples/distill_to_rnn.py end to end: teacher fine-tune, cached logits, distilled and baseline GRUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data import load_sentence_classification, tokenize
from distill_to_rnn import fine_tune_teacher, main
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_enhance import DistillationTrainer, EnhancedTrainingArguments
from hf_enhance.distillation import CachedTeacher, GRUClassifier
from tests.examples.conftest import common_flags, requires_minilm


def test_fine_tunes_teacher_then_distils_into_a_gru(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "teacher"
    runs = main(
        ["--teacher_base", str(tiny_model_dir), "--teacher_epochs", "1", "--save_teacher", str(saved),
         "--task", "sst2", "--num_train_epochs", "2", "--embedding_dim", "16", "--hidden_size", "8",
         "--compare_baseline", "--augment_copies", "2", "--unlabelled_samples", "5", "--alpha", "0.7", "--temperature", "3",
         *common_flags(tmp_path, data_dir)]
    )  # fmt: skip
    assert set(runs) == {"teacher", "distilled", "baseline"}
    distilled, baseline = runs["distilled"].trainer, runs["baseline"].trainer
    assert isinstance(distilled, DistillationTrainer)
    assert isinstance(distilled.teacher_model, CachedTeacher)
    assert (distilled.args.alpha, distilled.args.temperature) == (0.7, 3.0)
    assert not isinstance(baseline, DistillationTrainer)
    # Two teacher-labelled perturbed copies of each of the 24 sentences and 5 unlabelled training sentences join
    # the distillation data only.
    assert (len(distilled.train_dataset), len(baseline.train_dataset)) == (77, 24)
    extra = distilled.train_dataset.select(range(24, 77))
    batch = DataCollatorWithPadding(distilled.processing_class)(
        extra.select_columns(["input_ids", "attention_mask"]).to_list()
    )
    assert extra["label"] == distilled.teacher_model(**batch).argmax(-1).tolist()
    for trainer in (distilled, baseline):
        assert isinstance(trainer.model, GRUClassifier)
        assert trainer.model.embeddings.embedding_dim == 16
    # The distilled GRU logged its distillation term; both were evaluated with accuracy and MCC.
    assert any("kd_loss" in log for log in distilled.state.log_history)
    assert all({"eval_accuracy", "eval_mcc"} <= runs[name].metrics.keys() for name in runs)
    reloaded = AutoModelForSequenceClassification.from_pretrained(saved)
    assert AutoTokenizer.from_pretrained(saved)("a film")["input_ids"]
    torch.testing.assert_close(reloaded.classifier.weight, runs["teacher"].trainer.model.classifier.weight)
    printed = capsys.readouterr().out
    assert "GRU distilled" in printed and "GRU on labels alone" in printed


def test_reuses_a_saved_teacher_and_random_embeddings(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    runs = main(
        ["--teacher", str(tiny_model_dir), "--task", "cola", "--max_steps", "2", "--hidden_size", "8",
         "--no_init_embeddings", "--pooling", "last", "--no_bidirectional", *common_flags(tmp_path, data_dir)]
    )  # fmt: skip
    assert set(runs) == {"distilled"}
    student = runs["distilled"].trainer.model
    assert not student.gru.bidirectional and student.pooling == "last"
    teacher_table = runs[
        "distilled"
    ].trainer.teacher_model  # the cache: the teacher's weights were not copied
    assert isinstance(teacher_table, CachedTeacher)
    pretrained = AutoModel.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    assert not torch.allclose(student.embeddings.weight[1:, :], pretrained[1:, :], atol=1e-2)


@requires_minilm
@pytest.mark.slow
def test_default_teacher_is_the_offline_minilm(tmp_path: Path, data_dir: Path) -> None:
    runs = main(
        ["--teacher_epochs", "1", "--num_train_epochs", "1", "--embedding_dim", "32", "--hidden_size", "16",
         *common_flags(tmp_path, data_dir)]
    )  # fmt: skip
    assert type(runs["teacher"].trainer.model).__name__ == "BertForSequenceClassification"
    assert runs["distilled"].total_params < runs["teacher"].total_params


def test_teacher_fine_tune_is_seeded_whatever_ran_before(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    base = tmp_path / "base"  # an encoder without a classification head, as pretrained checkpoints are
    AutoModel.from_pretrained(tiny_model_dir).save_pretrained(base)
    data = load_sentence_classification("sst2", data_dir, max_train_samples=8, max_eval_samples=8)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenized = tokenize(data, tokenizer, 16)
    heads = []
    for state in (1, 2):
        torch.manual_seed(state)  # something else drew random numbers before the fine-tune
        args = EnhancedTrainingArguments(
            output_dir=str(tmp_path / str(state)), max_steps=1, report_to="none", use_cpu=True, seed=0
        )
        run = fine_tune_teacher(str(base), tokenized, tokenizer, args)
        heads.append(run.trainer.model.classifier.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
