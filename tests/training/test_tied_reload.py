"""Reloading the best checkpoint of a model with tied embeddings: tied weights restored, no missing-key warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from torch import nn

from hf_enhance.training import EnhancedTrainer, EnhancedTrainingArguments
from hf_enhance.training.internals import untied_missing_keys
from tests.tiny import tiny_gpt2


def test_the_best_checkpoint_reloads_tied_weights_without_a_missing_key_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_gpt2(seed=0, vocab_size=64)
    ids = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = EnhancedTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # the worse (first) epoch is "best": the reload changes the weights
    )
    trainer = EnhancedTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="transformers"):
            trainer.train()
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert "Loading best model" in caplog.text
    assert "missing keys" not in caplog.text
    assert model.lm_head.weight is model.transformer.wte.weight
    best = load_file(Path(trainer.state.best_model_checkpoint) / "model.safetensors")
    assert "lm_head.weight" not in best  # stored once, as its tied partner
    torch.testing.assert_close(model.transformer.wte.weight.detach(), best["transformer.wte.weight"])
    torch.testing.assert_close(model.lm_head.weight.detach(), best["transformer.wte.weight"])


def test_only_keys_whose_tensor_was_filled_are_dropped() -> None:
    model = nn.Module()
    model.a, model.c = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    model.b = model.a
    assert untied_missing_keys(model, ["b.weight"]) == []  # a.weight was loaded: b shares it
    assert untied_missing_keys(model, ["a.weight", "b.weight"]) == ["a.weight", "b.weight"]  # neither loaded
    assert untied_missing_keys(model, ["c.weight", "b.weight"]) == ["c.weight"]
