"""EnhancedTrainingArguments: the defaults themselves, switching off without evaluation, and errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from hf_enhance.training import AdaptiveGradClip, EarlyStopping, EnhancedTrainingArguments

EXPECTED_DEFAULTS = {
    "max_grad_norm": 1.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "eval_loss",
    "save_total_limit": 2,
    "early_stopping_patience": 3,
    "early_stopping_min_delta": 0.0,
    "early_stopping_relative": False,
    "early_stopping_baseline": None,
    "stop_on_nonfinite": True,
    "divergence_threshold": None,
    "grad_clip_mode": "norm",
    "autoclip_percentile": 10.0,
    "autoclip_history_size": None,
    "zclip_z_threshold": 2.5,
    "zclip_alpha": 0.97,
    "zclip_warmup_steps": 25,
    "adaptive_clip_max_norm": None,
}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("hf_enhance")
    ]


def test_defaults(tmp_path: Path) -> None:
    fields = EnhancedTrainingArguments.__dataclass_fields__
    assert {name: fields[name].default for name in EXPECTED_DEFAULTS} == EXPECTED_DEFAULTS
    args = EnhancedTrainingArguments(output_dir=str(tmp_path))
    assert args.eval_strategy == IntervalStrategy.EPOCH
    assert args.save_strategy == SaveStrategy.EPOCH
    assert args.greater_is_better is False
    callback = args.early_stopping_callback()
    assert isinstance(callback, EarlyStopping)
    assert (callback.patience, callback.min_delta, callback.check_finite) == (3, 0.0, True)
    assert args.grad_clipper() is None


def test_defaults_differ_from_transformers_where_documented() -> None:
    ours, theirs = EnhancedTrainingArguments.__dataclass_fields__, TrainingArguments.__dataclass_fields__
    changed = {name for name in theirs if ours[name].default != theirs[name].default}
    assert changed == {
        "eval_strategy",
        "save_strategy",
        "load_best_model_at_end",
        "metric_for_best_model",
        "save_total_limit",
    }


def test_evaluation_off_switches_off_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        args = EnhancedTrainingArguments(
            output_dir=str(tmp_path), eval_strategy="no", divergence_threshold=5.0
        )
    assert (args.load_best_model_at_end, args.early_stopping_patience, args.divergence_threshold) == (
        False,
        None,
        None,
    )
    (warning,) = _warnings(caplog)
    assert warning.startswith(
        "eval_strategy='no': evaluation is off, so early stopping (early_stopping_patience=3), the divergence stop "
        "(divergence_threshold=5) and best-model loading (load_best_model_at_end=True) are switched off."
    )
    callback = args.early_stopping_callback()
    assert callback is not None and callback.patience is None and callback.check_finite  # NaN guard stays on


def test_evaluation_off_is_quiet_when_dependents_are_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        EnhancedTrainingArguments(
            output_dir=str(tmp_path),
            eval_strategy="no",
            load_best_model_at_end=False,
            early_stopping_patience=None,
        )
    assert _warnings(caplog) == []


def test_without_evaluation_copies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = EnhancedTrainingArguments(output_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        off = args.without_evaluation("no eval_dataset was passed to the trainer")
    assert len(_warnings(caplog)) == 1
    assert (off.eval_strategy, off.do_eval, off.load_best_model_at_end) == (IntervalStrategy.NO, False, False)
    assert (args.eval_strategy, args.load_best_model_at_end, args.early_stopping_patience) == (
        "epoch",
        True,
        3,
    )


def test_steps_evaluation_saves_with_each_evaluation(tmp_path: Path) -> None:
    """transformers raises on eval 'steps' + save 'epoch' + load_best_model_at_end; the saves follow instead."""
    args = EnhancedTrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=50)
    assert (args.save_strategy, args.save_steps) == (SaveStrategy.STEPS, 50)
    with pytest.raises(ValueError, match="requires the save and eval strategy to match"):
        TrainingArguments(
            output_dir=str(tmp_path),
            eval_strategy="steps",
            eval_steps=50,
            save_strategy="epoch",
            load_best_model_at_end=True,
        )


def test_best_save_strategy_without_evaluation_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing would ever be saved"):
        EnhancedTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", save_strategy="best")


def test_clipping_settings(tmp_path: Path) -> None:
    assert EnhancedTrainingArguments(output_dir=str(tmp_path), max_grad_norm=None).max_grad_norm == 0.0
    args = EnhancedTrainingArguments(output_dir=str(tmp_path), grad_clip_mode="zclip", zclip_warmup_steps=7)
    clipper = args.grad_clipper()
    assert isinstance(clipper, AdaptiveGradClip)
    assert (clipper.method, clipper.warmup_steps) == ("zclip", 7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grad_clip_mode": "adaptive"}, "Valid choices: norm, value, autoclip, zclip"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be >= 0"),
        ({"early_stopping_patience": -1}, "patience must be None or an integer >= 0"),
        ({"early_stopping_min_delta": -0.5}, "min_delta must be a finite number >= 0"),
        ({"early_stopping_patience": None, "early_stopping_baseline": 0.3}, "needs a patience"),
        ({"grad_clip_mode": "autoclip", "autoclip_percentile": 0.0}, "percentile must be in"),
        ({"grad_clip_mode": "zclip", "zclip_alpha": 1.5}, "alpha must be in"),
    ],
)
def test_invalid_settings(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EnhancedTrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_command_line(tmp_path: Path) -> None:
    (args,) = HfArgumentParser(EnhancedTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--grad_clip_mode", "autoclip", "--early_stopping_patience", "5",
         "--early_stopping_relative", "true", "--divergence_threshold", "10"]
    )  # fmt: skip
    assert (args.grad_clip_mode, args.early_stopping_patience, args.early_stopping_relative) == (
        "autoclip",
        5,
        True,
    )
    assert args.divergence_threshold == 10.0
