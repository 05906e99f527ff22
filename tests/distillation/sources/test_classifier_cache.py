"""CachedTeacher: the cached logits equal the teacher's whatever the batching, and distil like the teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_enhance import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation import CachedTeacher, GRUClassifier
from tests.tiny import VOCAB, pad_collator, tiny_bert_classifier


def sentences(n: int = 12, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(2, 9, (1,), generator=generator))
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": int(torch.randint(0, 3, (1,), generator=generator))})
    return Dataset.from_list(rows)


def test_cached_logits_equal_the_teachers_for_any_batching() -> None:
    teacher = tiny_bert_classifier(num_labels=3).eval()
    train, held_out = sentences(12), sentences(5, seed=1)
    cache = CachedTeacher.from_model(
        teacher, [train, held_out], pad_collator, batch_size=4, show_progress=False
    )
    assert cache.num_labels == 3
    # Reversed order, one batch: different padding widths than when the cache was built.
    batch = pad_collator([train[i] for i in reversed(range(len(train)))] + list(held_out))
    with torch.no_grad():
        expected = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(cache(batch["input_ids"], batch["attention_mask"]), expected)


def test_unknown_sequence_raises_with_the_fix() -> None:
    cache = CachedTeacher([[1, 2, 3]], torch.zeros(1, 2))
    with pytest.raises(KeyError, match="every split the trainer"):
        cache(torch.tensor([[1, 2, 4]]), torch.tensor([[1, 1, 1]]))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="one row of logits per sequence"):
        CachedTeacher([[1, 2], [3]], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="Tokenize it first"):
        CachedTeacher.from_model(
            tiny_bert_classifier(), Dataset.from_dict({"text": ["a"]}), pad_collator, show_progress=False
        )


def test_distilling_from_the_cache_gives_the_teachers_loss(tmp_path: Path) -> None:
    teacher = tiny_bert_classifier(num_labels=3).eval()
    data = sentences(16)
    cache = CachedTeacher.from_model(teacher, data, pad_collator, show_progress=False)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        alpha=0.7,
        temperature=2.0,
    )
    student = GRUClassifier(VOCAB, num_labels=3, embedding_dim=8, hidden_size=8, dropout=0.0)
    batch = pad_collator([data[i] for i in range(8)])
    losses = []
    for stand_in in (teacher, cache):
        trainer = DistillationTrainer(
            model=student, teacher_model=stand_in, args=args, train_dataset=data, data_collator=pad_collator
        )
        losses.append(trainer.compute_loss(student, batch))
    torch.testing.assert_close(losses[0], losses[1])
    trainer.train()
    assert all(log.get("kd_loss", 0) >= 0 for log in trainer.state.log_history)
