"""GRUClassifier: padding-independent outputs, teacher-initialised embeddings, training with Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hf_enhance.distillation import GRUClassifier
from hf_enhance.students.gru import POOLINGS, projected_embeddings
from hf_enhance.training import EnhancedTrainer, EnhancedTrainingArguments
from tests.tiny import VOCAB, classification_dataset, pad_collator, tiny_bert_classifier


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_logits_do_not_depend_on_padding(pooling: str, bidirectional: bool) -> None:
    model = GRUClassifier(
        VOCAB,
        num_labels=3,
        embedding_dim=8,
        hidden_size=6,
        pooling=pooling,
        bidirectional=bidirectional,
        num_layers=2,
    ).eval()
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]
    alone = model(*padded([short])).logits
    batched = model(*padded([long, short])).logits
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[1:], alone)
    # Different pad ids would change the result if padded positions leaked into the GRU or the pooling.
    ids, mask = padded([long, short])
    ids[1, 3:] = 42
    torch.testing.assert_close(model(ids, mask).logits[1:], alone)


def test_no_mask_means_every_position_is_a_token() -> None:
    model = GRUClassifier(VOCAB, embedding_dim=8, hidden_size=6).eval()
    ids, mask = padded([[3, 4, 5], [6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, model(ids, mask).logits)


def test_loss_is_cross_entropy_with_labels_and_absent_without() -> None:
    model = GRUClassifier(VOCAB, num_labels=3, embedding_dim=8, hidden_size=6).eval()
    ids, mask = padded([[3, 4, 5], [6, 7]])
    labels = torch.tensor([2, 0])
    out = model(ids, mask, labels=labels)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
    assert model(ids, mask).loss is None


def test_left_padding_and_empty_rows_are_rejected() -> None:
    model = GRUClassifier(VOCAB, embedding_dim=8, hidden_size=6)
    ids = torch.tensor([[0, 3, 4], [5, 6, 7]])
    with pytest.raises(ValueError, match="padding_side = 'right'"):
        model(ids, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="empty sequence"):
        model(ids, torch.tensor([[0, 0, 0], [1, 1, 1]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "attention"}, "Valid choices: max, mean, last"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GRUClassifier(VOCAB, **kwargs)


def test_from_teacher_copies_embeddings_labels_and_padding_row() -> None:
    teacher = tiny_bert_classifier(num_labels=3, hidden=32)
    teacher.config.pad_token_id = 0
    student = GRUClassifier.from_teacher(teacher, hidden_size=8)
    table = teacher.get_input_embeddings().weight
    assert student.num_labels == 3
    assert student.embeddings.padding_idx == 0
    torch.testing.assert_close(student.embeddings.weight[1:], table[1:])
    assert torch.count_nonzero(student.embeddings.weight[0]) == 0
    assert student.embeddings.weight.data_ptr() != table.data_ptr()


def test_from_teacher_projects_to_a_smaller_width_keeping_geometry() -> None:
    teacher = tiny_bert_classifier(num_labels=2, hidden=32)
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.randn(VOCAB, 4, generator=generator) @ torch.randn(4, 32, generator=generator)
    with torch.no_grad():
        teacher.get_input_embeddings().weight.copy_(low_rank)
    student = GRUClassifier.from_teacher(teacher, embedding_dim=4, padding_idx=None, freeze_embeddings=True)
    reduced = student.embeddings.weight
    assert reduced.shape == (VOCAB, 4)
    assert not reduced.requires_grad
    # A rank-4 table loses nothing in 4 principal components: pairwise distances are preserved.
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(
        torch.cdist(reduced, reduced, compute_mode=exact),
        torch.cdist(low_rank, low_rank, compute_mode=exact),
        atol=1e-3,
        rtol=1e-3,
    )


def test_projection_and_teacher_errors() -> None:
    with pytest.raises(ValueError, match="principal components can only reduce"):
        projected_embeddings(torch.randn(10, 4), 8)
    with pytest.raises(TypeError, match="get_input_embeddings"):
        GRUClassifier.from_teacher(nn.Linear(3, 3))


def test_trains_with_enhanced_trainer(tmp_path: Path) -> None:
    model = GRUClassifier(VOCAB, num_labels=3, embedding_dim=16, hidden_size=16)
    data = classification_dataset(32, num_labels=3)
    args = EnhancedTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=15,
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        report_to="none",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=4,
        disable_tqdm=True,
        seed=0,
    )
    trainer = EnhancedTrainer(model=model, args=args, train_dataset=data, data_collator=pad_collator)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < 0.5 * losses[0]
