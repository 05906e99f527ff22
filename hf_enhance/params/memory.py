"""Training-memory estimate from a parameter count: weights + gradients + AdamW states, per precision setup.

Activations, the CUDA context and allocator fragmentation are not included: they depend on batch size,
sequence length and kernels, not on the parameters. The accounting per setup:

* ``fp32``: every floating-point tensor in float32; each trainable parameter carries a float32 gradient and
  two float32 AdamW states (exp_avg, exp_avg_sq): 16 bytes per trainable parameter. For full fine-tuning this
  is accelerate's ``estimate-memory`` "Training using Adam" figure for float32.
* ``bf16``: the model loaded in bfloat16 (``from_pretrained(..., dtype=torch.bfloat16)``). PEFT keeps adapter
  weights in float32 (``get_peft_model(autocast_adapter_dtype=True)``, its default), so adapters cost 16 bytes
  per parameter and everything trained in bfloat16 (full fine-tuning, ``modules_to_save`` copies) 8 bytes:
  torch's AdamW keeps its states in the parameter's dtype.
* ``qlora``: the ``bf16`` setup with the frozen linear weights that transformers' bitsandbytes integration
  quantizes (all ``nn.Linear``/``Conv1D`` but the output embedding and tied weights) stored in 4-bit NF4 with
  double quantization (the QLoRA recipe): 4 bits per weight plus one uint8 absmax per 64 weights and one
  float32 absmax per 256 of those, about 4.127 bits per weight.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

__all__ = ["MEMORY_SETUPS", "MemoryEstimate", "TensorGroup", "estimate_memory", "nf4_bytes"]

MEMORY_SETUPS: dict[str, str] = {
    "fp32": "all weights, gradients and AdamW states in float32",
    "bf16": "model loaded in bfloat16, AdamW states in the parameter dtype; PEFT adapters in float32",
    "qlora": "bf16 setup with frozen linear weights in 4-bit NF4, double-quantized (bitsandbytes)",
}

_ADAMW_STATES = 2
_FP32_BYTES = 4
_NF4_BLOCK = 64
_NESTED_BLOCK = 256


def nf4_bytes(numel: int) -> int:
    """Bytes bitsandbytes stores for one NF4, double-quantized weight of ``numel`` elements (uint8 storage)."""
    blocks = math.ceil(numel / _NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + _FP32_BYTES * math.ceil(blocks / _NESTED_BLOCK)


class TensorGroup(NamedTuple):
    """Tensors of a counted model that cost the same per element; ``numel`` and ``nf4_bytes`` are summed.

    ``itemsize`` is the element size when the model is loaded in bfloat16 (so 4 for PEFT adapters, which
    PEFT upcasts, and for float32 buffers; 8 for int64 buffers). ``quantizable`` marks frozen linear weights
    that a 4-bit load would quantize; ``nf4_bytes`` is their summed per-tensor 4-bit storage.
    """

    buffer: bool
    trainable: bool
    floating: bool
    quantizable: bool
    itemsize: int
    numel: int
    nf4_bytes: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes for weights, gradients and AdamW optimizer states of one setup (see module docstring)."""

    setup: str = field(metadata={"help": f"One of {list(MEMORY_SETUPS)}."})
    weights: int = field(metadata={"help": "All parameters and buffers, frozen and trainable."})
    gradients: int = field(metadata={"help": "One gradient per trainable parameter, in its dtype."})
    optimizer_states: int = field(metadata={"help": "AdamW exp_avg and exp_avg_sq per trainable parameter."})

    @property
    def total(self) -> int:
        """weights + gradients + optimizer_states, in bytes."""
        return self.weights + self.gradients + self.optimizer_states

    def to_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "total": self.total}


def estimate_memory(groups: tuple[TensorGroup, ...] | list[TensorGroup], setup: str) -> MemoryEstimate:
    """Weights + gradients + AdamW states of ``groups`` (from ``ParameterCount.tensors``) in ``setup``."""
    if setup not in MEMORY_SETUPS:
        raise ValueError(f"Unknown memory setup {setup!r}. Valid setups: {list(MEMORY_SETUPS)}.")
    if setup == "qlora" and any(g.trainable and g.quantizable for g in groups):
        raise ValueError(
            "The qlora setup needs frozen linear weights, but this count trains them (full fine-tuning?): "
            "4-bit weights cannot be trained. Use the fp32 or bf16 setup, or count an adapter method such as "
            "method='lora'."
        )
    weights = gradients = optimizer_states = 0
    for group in groups:
        itemsize = _FP32_BYTES if setup == "fp32" and group.floating else group.itemsize
        if setup == "qlora" and group.quantizable:
            weights += group.nf4_bytes
        else:
            weights += group.numel * itemsize
        if group.trainable:
            gradients += group.numel * itemsize
            optimizer_states += _ADAMW_STATES * group.numel * itemsize
    return MemoryEstimate(setup, weights, gradients, optimizer_states)
