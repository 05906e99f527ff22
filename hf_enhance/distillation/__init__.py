"""Knowledge distillation: the objective as pure functions and a `transformers.Trainer` that applies it."""

from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.losses import DistillationOutput, distillation_loss
from hf_enhance.distillation.trainer import DistillationTrainer

__all__ = ["DistillationOutput", "DistillationTrainer", "DistillationTrainingArguments", "distillation_loss"]
