"""examples/lora_classification.py end to end on a tiny BERT and a few rows of the real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from lora_classification import main

from tests.examples.conftest import common_flags, requires_minilm


def test_trains_only_adapters_and_head_and_reports_them(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = main(
        ["--model", str(tiny_model_dir), "--task", "cola", "--preset", "attention-qv", "-r", "4",
         "--lora_alpha", "8", "--scaling", "rslora", "--num_train_epochs", "2", *common_flags(tmp_path, data_dir)]
    )  # fmt: skip
    model = run.trainer.model
    config = model.peft_config["default"]
    assert config.r == 4
    assert sorted(config.target_modules) == ["query", "value"]
    assert config.use_rslora
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    assert run.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert run.epochs == 2
    assert 0.0 <= run.metrics["eval_accuracy"] <= 1.0 and "eval_mcc" in run.metrics
    printed = capsys.readouterr().out
    assert f"trainable params: {run.trainable_params:,} || all params: {run.total_params:,}" in printed
    assert "cola validation: accuracy" in printed


def test_unknown_preset_fails_before_training(tmp_path: Path, data_dir: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="attention-qv"):
        main(["--model", str(tiny_model_dir), "--preset", "everything", *common_flags(tmp_path, data_dir)])


@requires_minilm
@pytest.mark.slow
def test_default_model_is_the_offline_minilm(tmp_path: Path, data_dir: Path) -> None:
    run = main(["--task", "sst2", "--num_train_epochs", "1", *common_flags(tmp_path, data_dir)])
    assert type(run.trainer.model.get_base_model()).__name__ == "BertForSequenceClassification"
    assert run.trainable_params / run.total_params < 0.01
