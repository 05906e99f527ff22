"""LoRA target presets and scaling rules that resolve to plain PEFT configs."""

from hf_enhance.lora.config import lora_config, lora_metadata
from hf_enhance.lora.ia3 import ia3_config
from hf_enhance.lora.prefix import prefix_tuning_config
from hf_enhance.lora.presets import ROLES, LoraPreset
from hf_enhance.lora.ranks import RankSchedule
from hf_enhance.lora.scaling import list_lora_scalings, register_lora_scaling
from hf_enhance.lora.strength import get_adapter_strength, save_adapter, set_adapter_strength
from hf_enhance.lora.switching import merged_adapter, merged_adapters, switch_adapter
from hf_enhance.lora.targets import (
    architecture_roles,
    list_lora_presets,
    lora_targets,
    register_lora_architecture,
    register_lora_preset,
)

__all__ = [
    "ROLES",
    "LoraPreset",
    "RankSchedule",
    "architecture_roles",
    "get_adapter_strength",
    "ia3_config",
    "list_lora_presets",
    "list_lora_scalings",
    "lora_config",
    "lora_metadata",
    "lora_targets",
    "merged_adapter",
    "merged_adapters",
    "prefix_tuning_config",
    "register_lora_architecture",
    "register_lora_preset",
    "register_lora_scaling",
    "save_adapter",
    "set_adapter_strength",
    "switch_adapter",
]
