"""hf_enhance: knowledge distillation, LoRA presets and sane training defaults for the Hugging Face stack."""

from hf_enhance.distillation import (
    CachedTeacher,
    DistillationOutput,
    DistillationTrainer,
    DistillationTrainingArguments,
    GRUClassifier,
    distillation_loss,
    fused_distillation_loss,
)
from hf_enhance.lora import (
    RankSchedule,
    get_adapter_strength,
    ia3_config,
    list_lora_presets,
    list_lora_scalings,
    lora_config,
    lora_targets,
    merged_adapter,
    prefix_tuning_config,
    register_lora_architecture,
    register_lora_preset,
    register_lora_scaling,
    save_adapter,
    set_adapter_strength,
    switch_adapter,
)
from hf_enhance.params import MemoryEstimate, ParameterCount, count_parameters

__version__ = "0.1.0"

__all__ = [
    "CachedTeacher",
    "DistillationOutput",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "GRUClassifier",
    "MemoryEstimate",
    "ParameterCount",
    "RankSchedule",
    "__version__",
    "count_parameters",
    "distillation_loss",
    "fused_distillation_loss",
    "get_adapter_strength",
    "ia3_config",
    "list_lora_presets",
    "list_lora_scalings",
    "lora_config",
    "lora_targets",
    "merged_adapter",
    "prefix_tuning_config",
    "register_lora_architecture",
    "register_lora_preset",
    "register_lora_scaling",
    "save_adapter",
    "set_adapter_strength",
    "switch_adapter",
]
