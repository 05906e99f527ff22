"""Task switching on one base: merge adapter A, serve, unmerge (W0 = W - BA), merge B (W0 + B'A').

Merged weights run at base-model speed; switching costs one pass over the targeted weights, no reload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel

from hf_enhance.lora.strength import adapter_layers, lora_adapter_name, set_adapter_strength

__all__ = ["merged_adapter", "merged_adapters", "switch_adapter"]


def merged_adapters(peft_model: PeftModel) -> list[str]:
    """Names of the adapters currently merged into the base weights."""
    names = {
        name
        for adapter in peft_model.peft_config
        for layer in adapter_layers(peft_model, adapter)
        for name in layer.merged_adapters
    }
    return sorted(names)


def switch_adapter(
    peft_model: PeftModel, adapter_name: str, *, strength: float | None = None, safe_merge: bool = False
) -> None:
    """Unmerge whatever is merged (restoring W0), activate ``adapter_name`` and merge it.

    Args:
        peft_model: a PeftModel with one or more LoRA adapters loaded (``load_adapter``).
        adapter_name: the adapter to serve.
        strength: merge at this strength (see ``set_adapter_strength``); None keeps its current one.
        safe_merge: check the merged weights for NaNs before committing (PEFT's ``safe_merge``).
    """
    name = lora_adapter_name(peft_model, adapter_name)
    if merged_adapters(peft_model):
        peft_model.unmerge_adapter()
    peft_model.set_adapter(name)
    if strength is not None:
        set_adapter_strength(peft_model, strength, name)
    peft_model.merge_adapter([name], safe_merge=safe_merge)


@contextmanager
def merged_adapter(
    peft_model: PeftModel, adapter_name: str, *, strength: float | None = None
) -> Iterator[PeftModel]:
    """``with merged_adapter(model, "task_a"): ...`` runs with ``task_a`` merged.

    On exit, an exception included, the model is as it was before the block: ``task_a`` unmerged and back at its
    strength, the adapter that was active active again, and the adapters that were merged merged again.
    """
    name = lora_adapter_name(peft_model, adapter_name)
    active = peft_model.active_adapter
    merged_before = merged_adapters(peft_model)
    scales = [(layer, dict(layer.scaling)) for layer in adapter_layers(peft_model, name)]
    switch_adapter(peft_model, name, strength=strength)
    try:
        yield peft_model
    finally:
        peft_model.unmerge_adapter()
        for layer, scaling in scales:
            layer.scaling.update(scaling)
        peft_model.set_adapter(active)
        if merged_before:
            peft_model.merge_adapter(merged_before)
