"""``ParameterCount``: what a fine-tuning choice trains, per module, and the memory it implies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from hf_enhance.params.memory import MEMORY_SETUPS, MemoryEstimate, TensorGroup, estimate_memory

__all__ = ["ParameterCount"]

_LAYER_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


@dataclass(frozen=True)
class ParameterCount:
    """Total and trainable parameters of one model under one fine-tuning method, as PEFT counts them.

    ``total`` and ``trainable`` are ``PeftModel.get_nb_trainable_parameters()`` (tied weights counted once;
    adapters and ``modules_to_save`` copies included in ``total``); for full fine-tuning both are the model's
    parameter count.
    """

    model: str = field(metadata={"help": "Class name of the counted model (or the zoo name it came from)."})
    method: str = field(metadata={"help": "'full', or the PEFT method: 'lora', 'ia3', 'prefix_tuning', ..."})
    total: int = field(metadata={"help": "All parameters, adapters included."})
    trainable: int = field(metadata={"help": "Parameters with requires_grad after get_peft_model."})
    modules: dict[str, int] = field(
        metadata={
            "help": "Trainable parameters per module (adapter-wrapped layer, saved copy, prompt encoder)."
        }
    )
    tensors: tuple[TensorGroup, ...] = field(repr=False, metadata={"help": "Per-dtype sums for memory()."})
    peft_config: PeftConfig | None = field(
        default=None, repr=False, metadata={"help": "The PEFT config counted: pass it to get_peft_model."}
    )

    @property
    def trainable_fraction(self) -> float:
        """trainable / total, as a fraction (PEFT prints 100x this as ``trainable%``)."""
        return self.trainable / self.total if self.total else 0.0

    def by_module_type(self) -> dict[str, int]:
        """``modules`` summed over layers: ``model.layers.*.self_attn.q_proj -> trainable parameters``."""
        grouped: dict[str, int] = {}
        for name, count in self.modules.items():
            key = _LAYER_INDEX.sub("*", name)
            grouped[key] = grouped.get(key, 0) + count
        return grouped

    @property
    def memory_setups(self) -> list[str]:
        """The memory setups that apply: all of them for adapters, not ``qlora`` for full fine-tuning."""
        trains_quantizable = any(g.trainable and g.quantizable for g in self.tensors)
        return [s for s in MEMORY_SETUPS if not (s == "qlora" and trains_quantizable)]

    def memory(self, setup: str = "bf16") -> MemoryEstimate:
        """Weights + gradients + AdamW states in ``setup`` (``fp32``, ``bf16`` or ``qlora``), in bytes."""
        return estimate_memory(self.tensors, setup)

    def to_dict(self, *, modules: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``modules=True`` adds the full per-module breakdown."""
        summary: dict[str, Any] = {
            "model": self.model,
            "method": self.method,
            "total": self.total,
            "trainable": self.trainable,
            "trainable_fraction": self.trainable_fraction,
            "by_module_type": self.by_module_type(),
            "memory": {setup: self.memory(setup).to_dict() for setup in self.memory_setups},
        }
        if modules:
            summary["modules"] = dict(self.modules)
        return summary
