"""hf_enhance: knowledge distillation, LoRA presets and sane training defaults for the Hugging Face stack."""

from hf_enhance.distillation import (
    DistillationOutput,
    DistillationTrainer,
    DistillationTrainingArguments,
    distillation_loss,
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

__version__ = "0.1.0"

__all__ = [
    "DistillationOutput",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "RankSchedule",
    "__version__",
    "distillation_loss",
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
