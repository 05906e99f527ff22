"""Parameter counts and training-memory estimates for any model and fine-tuning method, and distillation memory
plans for a teacher and a student, on the meta device."""

from hf_enhance.params.counting import METHODS, count_parameters
from hf_enhance.params.memory import MEMORY_SETUPS, MemoryEstimate, estimate_memory
from hf_enhance.params.planner import MemoryPlan, plan_distillation_memory
from hf_enhance.params.result import ParameterCount
from hf_enhance.params.zoo import MODEL_ZOO, ZooModel, worked_example, zoo_config

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
