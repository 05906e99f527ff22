"""Parameter counts and training-memory estimates for any model and fine-tuning method, on the meta device."""

from hf_enhance.params.counting import METHODS, count_parameters
from hf_enhance.params.memory import MEMORY_SETUPS, MemoryEstimate, estimate_memory
from hf_enhance.params.result import ParameterCount
from hf_enhance.params.zoo import MODEL_ZOO, ZooModel, worked_example, zoo_config

__all__ = [
    "MEMORY_SETUPS",
    "METHODS",
    "MODEL_ZOO",
    "MemoryEstimate",
    "ParameterCount",
    "ZooModel",
    "count_parameters",
    "estimate_memory",
    "worked_example",
    "zoo_config",
]
