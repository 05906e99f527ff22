"""Tiny, seeded models and data built from configs: nothing touches the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from hf_enhance import DistillationTrainingArguments

VOCAB = 97
# Plain SGD: one update is exactly -learning_rate * gradient, so runs that should match can be compared exactly.
PLAIN_SGD = {"optim": "sgd", "lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": 0.0}


def tiny_gpt2(seed: int = 0, vocab_size: int = VOCAB, n_layer: int = 2, n_embd: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def tiny_bert_classifier(
    seed: int = 0, num_labels: int = 3, hidden: int = 32
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


class GRUClassifier(nn.Module):
    """A plain nn.Module student: forward returns a logits tensor."""

    def __init__(self, num_labels: int = 3, vocab_size: int = VOCAB, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        states, _ = self.gru(self.embed(input_ids))
        if attention_mask is None:
            return self.head(states[:, -1])
        last = attention_mask.sum(1).long().clamp(min=1) - 1
        return self.head(states[torch.arange(len(states)), last])


def lm_dataset(n: int = 16, seed: int = 0, min_len: int = 5, max_len: int = 12) -> Dataset:
    """Variable-length token sequences with labels = input_ids (padding is added by `pad_collator`)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids})
    return Dataset.from_list(rows)


def classification_dataset(n: int = 16, seed: int = 0, num_labels: int = 3, length: int = 8) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=generator)
    labels = torch.randint(0, num_labels, (n,), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def pad_collator(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad input_ids with 0, attention_mask with 0, token labels with -100."""
    width = max(len(row["input_ids"]) for row in rows)
    batch = {
        "input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows]),
        "attention_mask": torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        ),
    }
    labels = [r["labels"] for r in rows]
    if isinstance(labels[0], list):
        batch["labels"] = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    else:
        batch["labels"] = torch.tensor(labels)
    return batch


def distillation_args(tmp_path: Path, **overrides: Any) -> DistillationTrainingArguments:
    """Small, fast, CPU-only distillation arguments: 4 steps, a log every step, no evaluation or saving."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "eval_strategy": "no",
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return DistillationTrainingArguments(**settings)
