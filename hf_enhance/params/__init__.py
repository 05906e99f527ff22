"""Parameter counts and training-memory estimates for any model and fine-tuning method, and distillation memory
plans for a teacher and a student, on the meta device.

The names load on first use (PEP 562), so the ``hf-enhance`` command's parser (`hf_enhance.params.arguments`)
imports this package without torch, transformers or peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_enhance.lazy import lazy_exports

if TYPE_CHECKING:
    from hf_enhance.params.counting import count_parameters
    from hf_enhance.params.memory import MEMORY_SETUPS, MemoryEstimate, estimate_memory
    from hf_enhance.params.names import METHODS
    from hf_enhance.params.planner import MemoryPlan, plan_distillation_memory
    from hf_enhance.params.result import ParameterCount
    from hf_enhance.params.zoo import MODEL_ZOO, ZooModel, worked_example, zoo_config

_SOURCES: dict[str, tuple[str, ...]] = {
    "hf_enhance.params.counting": ("count_parameters",),
    "hf_enhance.params.memory": ("MEMORY_SETUPS", "MemoryEstimate", "estimate_memory"),
    "hf_enhance.params.names": ("METHODS",),
    "hf_enhance.params.planner": ("MemoryPlan", "plan_distillation_memory"),
    "hf_enhance.params.result": ("ParameterCount",),
    "hf_enhance.params.zoo": ("MODEL_ZOO", "ZooModel", "worked_example", "zoo_config"),
}

__all__ = [
    "MEMORY_SETUPS",
    "METHODS",
    "MODEL_ZOO",
    "MemoryEstimate",
    "MemoryPlan",
    "ParameterCount",
    "ZooModel",
    "count_parameters",
    "estimate_memory",
    "plan_distillation_memory",
    "worked_example",
    "zoo_config",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SOURCES, __all__)
