"""The public surface: a short top level, and every package's `__all__` importable."""

import importlib

import pytest

import hf_enhance

TOP_LEVEL = {
    "AdaptiveGradClip",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "EarlyStopping",
    "EnhancedTrainer",
    "EnhancedTrainingArguments",
    "PromptCompletionCollator",
    "__version__",
    "cache_teacher_logits",
    "count_parameters",
    "distillation_loss",
    "fused_distillation_loss",
    "hidden_state_loss",
    "list_lora_presets",
    "list_lora_scalings",
    "lora_config",
    "lora_targets",
    "save_adapter",
    "sparse_distillation_loss",
    "student_from_teacher",
    "teacher_student_report",
}
PACKAGES = ["distillation", "lora", "students", "params", "training"]


def test_top_level_all_is_exactly_the_short_list() -> None:
    assert len(hf_enhance.__all__) == len(set(hf_enhance.__all__)), "duplicate names in hf_enhance.__all__"
    assert set(hf_enhance.__all__) == TOP_LEVEL
    for name in hf_enhance.__all__:
        assert hasattr(hf_enhance, name), (
            f"hf_enhance.__all__ names {name!r}, which hf_enhance does not define"
        )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_name_imports(package: str) -> None:
    module = importlib.import_module(f"hf_enhance.{package}")
    assert module.__all__, f"hf_enhance.{package}.__all__ is empty"
    namespace: dict[str, object] = {}
    exec(f"from hf_enhance.{package} import {', '.join(module.__all__)}", namespace)
    assert all(namespace[name] is getattr(module, name) for name in module.__all__)


def test_every_top_level_name_also_lives_in_a_package() -> None:
    """The top level re-exports: each name (but the version) comes from a package that lists it."""
    homes = {
        name for package in PACKAGES for name in importlib.import_module(f"hf_enhance.{package}").__all__
    }
    assert TOP_LEVEL - {"__version__"} <= homes
