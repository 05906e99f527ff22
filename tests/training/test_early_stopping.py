"""EarlyStopping driven through its TrainerCallback hooks with scripted metric sequences."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_enhance.training import EarlyStopping

NAN, INF = float("nan"), float("inf")


def _args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "eval_strategy": "epoch",
        "report_to": "none",
        "use_cpu": True,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def _run(
    callback: EarlyStopping,
    values: list[float],
    args: TrainingArguments,
    key: str = "eval_loss",
    state: TrainerState | None = None,
) -> int | None:
    """Feed one evaluation per value; return the index of the evaluation that stopped training."""
    state = state or TrainerState()
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    for i, value in enumerate(values):
        state.global_step += 1
        callback.on_evaluate(args, state, control, metrics={key: value, "eval_runtime": 0.1})
        if control.should_training_stop:
            return i
    return None


@pytest.mark.parametrize(
    ("kwargs", "values", "stop_at", "reason"),
    [
        pytest.param({}, [1.0, 0.9, 0.95, 0.92, 0.91], 4, "did not improve on its best 0.9", id="patience"),
        pytest.param({}, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], None, None, id="improving"),
        pytest.param({"patience": 1}, [1.0, 1.0], 1, "for 1 evaluations", id="equal-is-no-gain"),
        pytest.param(
            {"min_delta": 0.1}, [1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76], None, None, id="slow-gains-add-up"
        ),
        pytest.param({"min_delta": 0.1}, [1.0, 0.96, 0.95, 0.94], 3, "min_delta=0.1", id="min-delta"),
        pytest.param({"patience": 2, "min_delta": 0.01}, [100.0, 99.9, 99.8], None, None, id="absolute"),
        pytest.param(
            {"patience": 2, "min_delta": 0.01, "relative": True},
            [100.0, 99.9, 99.8],
            2,
            "(relative)",
            id="relative",
        ),
        pytest.param(
            {"patience": 2, "min_delta": 0.05, "relative": True},
            [100.0, 96.0, 94.0, 90.0],
            None,
            None,
            id="rel-gain",
        ),
        pytest.param(
            {"patience": 2, "baseline": 0.5}, [0.8, 0.7, 0.6], 1, "baseline 0.5", id="baseline-never"
        ),
        pytest.param(
            {"patience": 2, "baseline": 0.5}, [0.8, 0.4, 0.45, 0.46], 3, "best 0.4", id="baseline-beaten"
        ),
        pytest.param(
            {"divergence_threshold": 2.0}, [1.0, 0.9, 2.5], 2, "divergence_threshold=2", id="divergence"
        ),
        pytest.param({}, [1.0, NAN], 1, "eval_loss is nan", id="nan"),
        pytest.param({}, [1.0, INF], 1, "eval_loss is inf", id="inf"),
        pytest.param({"check_finite": False}, [1.0, NAN, NAN, NAN], 3, "did not improve", id="nan-unchecked"),
        pytest.param({"patience": None}, [1.0, 2.0, 3.0, 4.0, 5.0], None, None, id="patience-off"),
        pytest.param({"patience": 0}, [1.0, 2.0, 3.0, 4.0, 5.0], None, None, id="patience-zero-off"),
        pytest.param({"patience": None}, [1.0, 2.0, NAN], 2, "is nan", id="patience-off-nan-on"),
    ],
)
def test_scripted_sequences(
    tmp_path: Path, kwargs: dict, values: list[float], stop_at: int | None, reason: str | None
) -> None:
    callback = EarlyStopping(**kwargs)
    assert _run(callback, values, _args(tmp_path)) == stop_at
    if reason is None:
        assert callback.stop_reason is None
    else:
        assert reason in callback.stop_reason
        assert callback.stopped_step == stop_at + 1


@pytest.mark.parametrize(
    ("values", "stop_at"),
    [([0.5, 0.6, 0.55, 0.58, 0.59], 4), ([0.5, 0.4, 0.3, 0.2], 3), ([0.1, 0.2, 0.3], None)],
)
def test_max_mode(tmp_path: Path, values: list[float], stop_at: int | None) -> None:
    callback = EarlyStopping(metric="accuracy", mode="max")
    assert _run(callback, values, _args(tmp_path), key="eval_accuracy") == stop_at


def test_mode_follows_greater_is_better(tmp_path: Path) -> None:
    args = _args(tmp_path, metric_for_best_model="accuracy")  # transformers infers greater_is_better=True
    assert _run(EarlyStopping(), [0.5, 0.4, 0.3, 0.2], args, key="eval_accuracy") == 3
    args = _args(tmp_path, metric_for_best_model="accuracy", greater_is_better=False)
    assert _run(EarlyStopping(), [0.5, 0.4, 0.3, 0.2], args, key="eval_accuracy") is None


def test_mode_that_cannot_be_inferred_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        EarlyStopping(metric="perplexity").on_train_begin(_args(tmp_path), TrainerState(), TrainerControl())


def test_missing_metric_lists_available_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'eval_accuracy'.*Available: \['eval_loss', 'eval_runtime'\]"):
        _run(EarlyStopping(metric="accuracy", mode="max"), [1.0], _args(tmp_path))


def test_other_eval_datasets_are_ignored(tmp_path: Path) -> None:
    """With a dict eval_dataset each set is evaluated under its own prefix; only the watched one counts."""
    args, state, control = _args(tmp_path), TrainerState(), TrainerControl()
    callback = EarlyStopping(metric="eval_val_loss", patience=1)
    callback.on_train_begin(args, state, control)
    for step, value in enumerate([1.0, 2.0], start=1):
        state.global_step = step
        callback.on_evaluate(
            args, state, control, metrics={"eval_train_loss": 0.0, "eval_train_runtime": 0.1}
        )
        callback.on_evaluate(args, state, control, metrics={"eval_val_loss": value, "eval_val_runtime": 0.1})
    assert control.should_training_stop
    assert callback.best == 1.0


def test_evaluations_outside_training_are_ignored(tmp_path: Path) -> None:
    args, state, control = _args(tmp_path), TrainerState(), TrainerControl()
    callback = EarlyStopping(patience=1)
    callback.on_evaluate(args, state, control, metrics={"eval_loss": NAN})
    assert _run(callback, [1.0], args) is None
    callback.on_train_end(args, state, control)
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 5.0})
    assert not control.should_training_stop


@pytest.mark.parametrize(("key", "value"), [("loss", NAN), ("loss", INF), ("grad_norm", NAN)])
def test_nonfinite_training_log_stops_at_once(tmp_path: Path, key: str, value: float) -> None:
    args, state, control = _args(tmp_path), TrainerState(), TrainerControl()
    callback = EarlyStopping()
    callback.on_train_begin(args, state, control)
    state.global_step = 7
    callback.on_log(args, state, control, logs={"loss": 1.0, "grad_norm": 1.0})
    assert not control.should_training_stop
    callback.on_log(args, state, control, logs={key: value})
    assert control.should_training_stop
    assert callback.stop_reason.startswith(f"training {key} is {value} at step 7")


def test_stop_reason_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = EarlyStopping(patience=1)
    with caplog.at_level(logging.WARNING, logger="hf_enhance"):
        _run(callback, [1.0, 2.0], _args(tmp_path))
        callback.on_log(_args(tmp_path), TrainerState(), TrainerControl(), logs={"loss": NAN})
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Early stopping")]
    assert messages == [f"Early stopping: {callback.stop_reason}"]


def test_resume_keeps_counting(tmp_path: Path) -> None:
    args = _args(tmp_path)
    first = EarlyStopping(patience=3)
    assert _run(first, [1.0, 0.9, 0.95, 0.96], args) is None  # two evaluations without gain so far
    saved = TrainerState(stateful_callbacks=[first])
    saved.global_step = 4
    path = tmp_path / "trainer_state.json"
    saved.save_to_json(str(path))

    resumed = EarlyStopping(patience=3)
    assert _run(resumed, [0.97], args, state=TrainerState.load_from_json(str(path))) == 0
    assert "best 0.9 (step 2)" in resumed.stop_reason
    fresh = EarlyStopping(patience=3)
    assert _run(fresh, [0.97], args, state=TrainerState()) is None  # a new run starts counting afresh


def test_state_round_trips_through_transformers_protocol(tmp_path: Path) -> None:
    callback = EarlyStopping(patience=4, min_delta=0.1, relative=True, baseline=2.0, divergence_threshold=9.0)
    _run(callback, [1.5, 1.6], _args(tmp_path))
    restored = EarlyStopping.from_state(json.loads(json.dumps(callback.state())))
    assert restored.state() == callback.state()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": -1}, "patience must be None or an integer >= 0"),
        ({"patience": 1.5}, "patience must be None or an integer >= 0"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
        ({"min_delta": math.nan}, "min_delta must be a finite number >= 0"),
        ({"mode": "lower"}, "Valid choices: min, max"),
        ({"patience": None, "baseline": 1.0}, "needs a patience"),
        ({"baseline": math.inf}, "baseline must be a finite number"),
        ({"divergence_threshold": math.nan}, "divergence_threshold must be a finite number"),
    ],
)
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)
