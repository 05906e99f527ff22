"""hf_enhance: knowledge distillation, LoRA presets and sane training defaults for the Hugging Face stack.

The top level holds the trainers, their arguments, the loss functions, the student builder, the LoRA
config/target/scaling functions, `count_parameters` and the callbacks. Everything else is imported from its
package: `hf_enhance.distillation`, `hf_enhance.lora`, `hf_enhance.students`, `hf_enhance.params`,
`hf_enhance.training` (each lists its names in `__all__`).
"""

from hf_enhance.distillation import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
    cache_teacher_logits,
    distillation_loss,
    fused_distillation_loss,
    hidden_state_loss,
    sparse_distillation_loss,
    teacher_student_report,
)
from hf_enhance.lora import list_lora_presets, list_lora_scalings, lora_config, lora_targets, save_adapter
from hf_enhance.params import count_parameters
from hf_enhance.students import student_from_teacher
from hf_enhance.training import AdaptiveGradClip, EarlyStopping, EnhancedTrainer, EnhancedTrainingArguments

__version__ = "0.1.0"

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
