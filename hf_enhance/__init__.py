"""hf_enhance: knowledge distillation, LoRA presets and sane training defaults for the Hugging Face stack.

The top level holds the trainers, their arguments, the loss functions, the student builder, the LoRA
config/target/scaling functions, `count_parameters` and the callbacks. Everything else is imported from its
package: `hf_enhance.distillation`, `hf_enhance.objectives`, `hf_enhance.lora`, `hf_enhance.students`,
`hf_enhance.params`, `hf_enhance.training` (each lists its names in `__all__`).

Each name is imported on first use, so `import hf_enhance.objectives` (torch only) or `import hf_enhance.params`
loads no trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_enhance.lazy import lazy_exports

if TYPE_CHECKING:
    from hf_enhance.distillation import (
        DistillationTrainer,
        DistillationTrainingArguments,
        PromptCompletionCollator,
        cache_teacher_logits,
        teacher_student_report,
    )
    from hf_enhance.lora import list_lora_presets, list_lora_scalings, lora_config, lora_targets, save_adapter
    from hf_enhance.objectives import (
        distillation_loss,
        fused_distillation_loss,
        hidden_state_loss,
        sparse_distillation_loss,
    )
    from hf_enhance.params import count_parameters
    from hf_enhance.students import student_from_teacher
    from hf_enhance.training import (
        AdaptiveGradClip,
        EarlyStopping,
        EnhancedTrainer,
        EnhancedTrainingArguments,
    )

__version__ = "0.1.0"

_SOURCES: dict[str, tuple[str, ...]] = {
    "hf_enhance.distillation": (
        "DistillationTrainer",
        "DistillationTrainingArguments",
        "PromptCompletionCollator",
        "cache_teacher_logits",
        "teacher_student_report",
    ),
    "hf_enhance.lora": (
        "list_lora_presets",
        "list_lora_scalings",
        "lora_config",
        "lora_targets",
        "save_adapter",
    ),
    "hf_enhance.objectives": (
        "distillation_loss",
        "fused_distillation_loss",
        "hidden_state_loss",
        "sparse_distillation_loss",
    ),
    "hf_enhance.params": ("count_parameters",),
    "hf_enhance.students": ("student_from_teacher",),
    "hf_enhance.training": (
        "AdaptiveGradClip",
        "EarlyStopping",
        "EnhancedTrainer",
        "EnhancedTrainingArguments",
    ),
}

__all__ = [
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
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SOURCES, __all__)
