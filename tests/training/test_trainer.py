"""EnhancedTrainer end to end on a tiny regression model: defaults, early stopping, best weights, clipping."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_enhance.training import EarlyStopping, EnhancedTrainer
from tests.training.tiny import TinyRegressor, make_args, regression_data, scripted_metric

# regression_data() has 32 rows and make_args() a batch of 8: 4 optimizer steps per epoch.


class StopAfterSave(TrainerCallback):
    """Simulates an interrupted run: stop right after the checkpoint of `step` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


class GradRecorder(TrainerCallback):
    """Records the gradients the optimizer is about to apply (after clipping), per step."""

    def __init__(self) -> None:
        self.norm: dict[int, float] = {}
        self.peak: dict[int, float] = {}

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        step = state.global_step + 1
        self.norm[step] = torch.nn.utils.get_total_norm(grads).item()
        self.peak[step] = torch.nn.utils.get_total_norm(grads, norm_type=math.inf).item()


def _train_logs(trainer: Trainer) -> list[dict[str, Any]]:
    return [log for log in trainer.state.log_history if "loss" in log]


def _hf_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("hf_enhance")
    ]


def test_no_eval_dataset_trains_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = make_args(tmp_path)
    with pytest.raises(ValueError, match="didn't pass an `eval_dataset`"):
        Trainer(model=TinyRegressor(), args=args, train_dataset=regression_data())
    with caplog.at_level(logging.WARNING):
        # positional arguments pass through like Trainer's: model, args, data_collator, train_dataset
        trainer = EnhancedTrainer(TinyRegressor(), args, None, regression_data())
        trainer.train()
    (warning,) = _hf_warnings(caplog)
    assert "no eval_dataset was passed" in warning
    assert trainer.state.global_step == 12
    assert not any("eval_loss" in log for log in trainer.state.log_history)
    assert (
        args.eval_strategy == "epoch" and args.load_best_model_at_end
    )  # the caller's arguments are untouched


def test_stops_early_and_ends_with_the_best_checkpoint_weights(tmp_path: Path) -> None:
    args = make_args(tmp_path, num_train_epochs=8, metric_for_best_model="score")  # higher is better
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        compute_metrics=scripted_metric([0.5, 0.9, 0.7, 0.6, 0.6, 0.95, 0.99, 0.99]),
    )
    trainer.train()
    assert (
        trainer.state.global_step == 20
    )  # best at epoch 2, three evaluations without gain: stop after epoch 5
    assert "best 0.9 (step 8)" in trainer.stop_reason
    assert sorted(p.name for p in Path(args.output_dir).iterdir()) == ["checkpoint-20", "checkpoint-8"]
    final = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    best = load_file(str(Path(args.output_dir) / "checkpoint-8" / "model.safetensors"))
    last = load_file(str(Path(args.output_dir) / "checkpoint-20" / "model.safetensors"))
    for name, value in final.items():
        torch.testing.assert_close(value, best[name])
    assert not all(torch.equal(final[name], last[name]) for name in final)


class WeightRecorder(TrainerCallback):
    """The model's parameters after every optimizer step, and Adam's first moment of the weight matrix."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.moments: dict[int, torch.Tensor] = {}

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.named_parameters()}
        moment = optimizer.state.get(model.linear.weight, {}).get("exp_avg")
        if moment is not None:
            self.moments[state.global_step] = moment.clone()


def _trained_on_a_nan_row(tmp_path: Path, **overrides: Any) -> tuple[EnhancedTrainer, WeightRecorder]:
    """3 epochs of 4 steps; the batch holding row 0 (a NaN feature) has a NaN gradient."""
    recorder = WeightRecorder()
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=make_args(tmp_path, num_train_epochs=3, **overrides),
        train_dataset=regression_data(nan_row=0),
        eval_dataset=regression_data(16),
        callbacks=[recorder],
    )
    trainer.train()
    return trainer, recorder


def test_nonfinite_loss_skips_the_step_and_stops_there(tmp_path: Path) -> None:
    trainer, recorder = _trained_on_a_nan_row(tmp_path, logging_steps=100)  # no regular log before the NaN
    (nan_log,) = [log for log in trainer.state.log_history if "grad_norm" in log]
    nan_step = nan_log["step"]
    assert math.isnan(nan_log["grad_norm"]) and nan_log["skipped_steps"] == 1
    assert trainer.state.global_step == nan_step and 1 < nan_step <= 4
    assert trainer.stop_reason == f"training grad_norm is nan at step {nan_step}: stopped at once."
    # the NaN gradient never reached the weights: they are those of the step before, and finite
    for name, value in recorder.weights[nan_step].items():
        assert torch.equal(value, recorder.weights[nan_step - 1][name]) and value.isfinite().all(), name
    # the evaluation and checkpoint at the epoch end are skipped after the stop; saving by hand works
    assert not any("eval_loss" in log for log in trainer.state.log_history)
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(tensor.isfinite().all() for tensor in saved.values())


def test_training_goes_on_past_skipped_steps_with_weights_and_moments_unchanged(tmp_path: Path) -> None:
    trainer, recorder = _trained_on_a_nan_row(tmp_path, stop_on_nonfinite=False, save_strategy="no",
                                              load_best_model_at_end=False, early_stopping_patience=None)  # fmt: skip
    assert trainer.state.global_step == 12  # one NaN row per epoch: three skipped steps, no stop
    skipped = [
        step
        for step in range(2, 13)
        if all(
            torch.equal(recorder.weights[step][k], recorder.weights[step - 1][k])
            for k in recorder.weights[step]
        )
    ]
    assert len(skipped) == 3  # one per epoch (none at step 1 with this data order)
    for step in skipped:
        torch.testing.assert_close(recorder.moments[step], recorder.moments[step - 1], rtol=0, atol=0)
    assert [log.get("skipped_steps", 0) for log in trainer.state.log_history if "loss" in log][-1] == 3
    assert all(value.isfinite().all() for value in trainer.model.state_dict().values())


def test_saving_nonfinite_weights_is_refused(tmp_path: Path) -> None:
    args = make_args(tmp_path, num_train_epochs=1, skip_nonfinite_steps=False, stop_on_nonfinite=False,
                     save_strategy="no", load_best_model_at_end=False, early_stopping_patience=None)  # fmt: skip
    trainer = EnhancedTrainer(model=TinyRegressor(), args=args, train_dataset=regression_data(nan_row=0))
    trainer.train()  # nothing skipped: the NaN gradient reaches the weights
    assert not trainer.model.linear.weight.isfinite().all()
    with pytest.raises(
        ValueError, match=r"Refusing to save .*'linear\.weight' holds 4 NaN/inf value\(s\) of 4"
    ):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("restore_flag", [False, True])
def test_resumed_run_keeps_counting(tmp_path: Path, restore_flag: bool) -> None:
    scores = [0.5, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6]
    args = make_args(
        tmp_path,
        num_train_epochs=8,
        metric_for_best_model="score",
        restore_callback_states_from_checkpoint=restore_flag,
    )
    data, eval_data = regression_data(), regression_data(16)
    first = EnhancedTrainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=data,
        eval_dataset=eval_data,
        compute_metrics=scripted_metric(scores[:4]),
        callbacks=[StopAfterSave(16)],
    )
    first.train()
    assert (
        first.state.global_step == 16 and first.stop_reason is None
    )  # interrupted, two evaluations without gain

    second = EnhancedTrainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=data,
        eval_dataset=eval_data,
        compute_metrics=scripted_metric(scores[4:]),
    )
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 20  # the third evaluation without gain, not the first
    assert "best 0.9 (step 8)" in second.stop_reason
    assert second.state.best_model_checkpoint.endswith("checkpoint-8")


def test_adaptive_clip_statistics_resume(tmp_path: Path) -> None:
    args = make_args(tmp_path, grad_clip_mode="autoclip")
    data, eval_data = regression_data(), regression_data(16)
    first = EnhancedTrainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=data,
        eval_dataset=eval_data,
        callbacks=[StopAfterSave(8)],
    )
    first.train()
    second = EnhancedTrainer(model=TinyRegressor(), args=args, train_dataset=data, eval_dataset=eval_data)
    second.train(resume_from_checkpoint=True)
    saved = json.loads((Path(args.output_dir) / "checkpoint-12" / "grad_clip_state.json").read_text())
    assert saved["method"] == "autoclip"
    assert len(saved["norms"]) == 12  # every step of the run, not only those since the resume


@pytest.mark.parametrize(
    ("overrides", "threshold"),
    [
        ({"grad_clip_mode": "norm", "max_grad_norm": 0.01}, 0.01),
        ({"grad_clip_mode": "value", "max_grad_norm": 0.001}, 0.001),
        ({"grad_clip_mode": "autoclip", "autoclip_percentile": 50.0}, None),
        ({"grad_clip_mode": "zclip", "zclip_warmup_steps": 2, "zclip_z_threshold": 0.5}, None),
    ],
)
def test_clipping_modes(tmp_path: Path, overrides: dict, threshold: float | None) -> None:
    recorder = GradRecorder()
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=make_args(tmp_path, logging_steps=1, **overrides),
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        callbacks=[recorder],
    )
    trainer.train()
    logs = _train_logs(trainer)
    assert len(logs) == 12
    for log in logs:
        step, pre_clip = log["step"], log["grad_norm"]
        if overrides["grad_clip_mode"] == "value":
            assert recorder.peak[step] <= threshold + 1e-9
            assert pre_clip > recorder.norm[step]  # the logged norm is the one before clipping
        else:
            limit = log.get("grad_clip_threshold", math.inf)  # not logged while ZClip warms up
            assert recorder.norm[step] == pytest.approx(min(pre_clip, limit), rel=1e-4)
        assert log["grad_clip_fraction"] == (1.0 if recorder.norm[step] < pre_clip * (1 - 1e-6) else 0.0)
        if threshold is not None:
            assert log["grad_clip_threshold"] == threshold
    assert any(log["grad_clip_fraction"] == 1.0 for log in logs)


def test_max_grad_norm_zero_turns_clipping_off(tmp_path: Path) -> None:
    recorder = GradRecorder()
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=make_args(tmp_path, logging_steps=1, grad_clip_mode="autoclip", max_grad_norm=0),
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        callbacks=[recorder],
    )
    trainer.train()
    for log in _train_logs(trainer):
        assert "grad_clip_fraction" not in log
        assert log["grad_norm"] == pytest.approx(recorder.norm[log["step"]], rel=1e-6)


def test_plain_training_arguments_behave_like_trainer(tmp_path: Path) -> None:
    def run(trainer_cls: type[Trainer], name: str) -> list[dict[str, Any]]:
        args = TrainingArguments(
            output_dir=str(tmp_path / name), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=0.05,
            logging_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = trainer_cls(model=TinyRegressor(), args=args, train_dataset=regression_data())
        assert not any(isinstance(cb, EarlyStopping) for cb in trainer.callback_handler.callbacks)
        trainer.train()
        return [
            {k: v for k, v in log.items() if k in ("loss", "grad_norm", "step")}
            for log in _train_logs(trainer)
        ]

    assert run(EnhancedTrainer, "enhanced") == run(Trainer, "plain")


def test_early_stopping_in_a_plain_trainer(tmp_path: Path) -> None:
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=6, eval_strategy="epoch",
        save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="score", report_to="none",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = EarlyStopping(patience=2)
    trainer = Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        compute_metrics=scripted_metric([0.1, 0.3, 0.2, 0.25, 0.9, 0.9]),
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.state.global_step == 16
    assert "best 0.3 (step 8)" in callback.stop_reason
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-8")


def test_callbacks_passed_in_win(tmp_path: Path) -> None:
    mine = EarlyStopping(patience=1)
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=make_args(tmp_path),
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        callbacks=[mine],
    )
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStopping)] == [mine]


def test_missing_metric_fails_at_first_evaluation(tmp_path: Path) -> None:
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=make_args(tmp_path, metric_for_best_model="accuracy"),
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
    )
    with pytest.raises(
        ValueError, match=r"'eval_accuracy', which is not in the evaluation metrics. Available: \["
    ):
        trainer.train()


def test_an_empty_training_set_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_dataset is empty"):
        EnhancedTrainer(
            model=TinyRegressor(), args=make_args(tmp_path), train_dataset=regression_data().select([])
        )
