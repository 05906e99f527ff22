"""Adapter strength at inference: 0 = base model, 1 = as trained, > 1 = more emphasis.

Strength ``k`` multiplies every LoRA update of an adapter: ``W0 + k * scale * B @ A``. ``save_adapter`` bakes
``k`` into the saved ``lora_alpha``/``alpha_pattern`` so vanilla ``PeftModel.from_pretrained`` reproduces it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from peft import PeftModel
from peft.tuners.lora import LoraLayer

import hf_enhance
from hf_enhance.files import write_json_atomically
from hf_enhance.lora.config import lora_metadata
from hf_enhance.lora.patterns import clean_number
from hf_enhance.students.record import RECORD_KEY, student_record

__all__ = [
    "METADATA_FILE",
    "adapter_layers",
    "get_adapter_strength",
    "lora_adapter_name",
    "save_adapter",
    "set_adapter_strength",
]

METADATA_FILE = "hf_enhance.json"


def lora_adapter_name(peft_model: PeftModel, adapter_name: str | None) -> str:
    """``adapter_name`` (default: the active adapter), checked to be a loaded, plain LoRA adapter."""
    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict):
        raise TypeError(f"Expected a peft.PeftModel, got {type(peft_model).__name__}.")
    name = adapter_name if adapter_name is not None else peft_model.active_adapter
    if name not in configs:
        raise ValueError(f"Unknown adapter {name!r}. Loaded adapters: {sorted(configs)}.")
    if str(getattr(configs[name].peft_type, "value", configs[name].peft_type)) != "LORA":
        raise ValueError(
            f"Adapter {name!r} is {configs[name].peft_type}, not LoRA; strength applies to LoRA only."
        )
    if getattr(configs[name], "use_dora", False):
        raise ValueError(
            f"Adapter {name!r} uses DoRA, whose magnitude vector does not scale with the LoRA update, so strength "
            "would not interpolate between base and adapter. Use a plain LoRA adapter."
        )
    return name


def adapter_layers(peft_model: PeftModel, adapter_name: str) -> list[LoraLayer]:
    """The LoRA layers holding ``adapter_name``."""
    return [m for m in peft_model.modules() if isinstance(m, LoraLayer) and adapter_name in m.scaling]


def _trained_scale(layer: LoraLayer, adapter_name: str) -> float:
    r = layer.r[adapter_name]
    alpha = layer.lora_alpha[adapter_name]
    return alpha / math.sqrt(r) if layer.use_rslora.get(adapter_name, False) else alpha / r


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}.")
    if strength < 0:
        raise ValueError(
            f"strength must be >= 0 (0 = base model, 1 = as trained, > 1 = more emphasis), got {strength}."
        )
    return float(strength)


def set_adapter_strength(peft_model: PeftModel, strength: float, adapter_name: str | None = None) -> None:
    """Scale adapter ``adapter_name`` (default: the active one) to ``strength`` times its trained effect.

    Absolute, not cumulative: ``set_adapter_strength(m, 2)`` twice is still 2. Task heads in
    ``modules_to_save`` are replaced wholesale and do not scale.
    """
    strength = _check_strength(strength)
    name = lora_adapter_name(peft_model, adapter_name)
    layers = adapter_layers(peft_model, name)
    if any(name in layer.merged_adapters for layer in layers):
        raise ValueError(
            f"Adapter {name!r} is merged into the base weights; its strength cannot change in place. "
            "Call peft_model.unmerge_adapter() first (or switch_adapter(model, name, strength=k) to re-merge)."
        )
    for layer in layers:
        layer.set_scale(name, strength)


def get_adapter_strength(peft_model: PeftModel, adapter_name: str | None = None) -> float:
    """The strength adapter ``adapter_name`` currently runs at (1.0 unless changed)."""
    name = lora_adapter_name(peft_model, adapter_name)
    ratios = {
        round(layer.scaling[name] / _trained_scale(layer, name), 9)
        for layer in adapter_layers(peft_model, name)
        if _trained_scale(layer, name) != 0
    }
    if len(ratios) > 1:
        raise ValueError(
            f"Adapter {name!r} runs at different strengths in different layers ({sorted(ratios)[:4]}...), e.g. "
            "after LoraLayer.scale_layer(). Call set_adapter_strength(model, k) to make it uniform."
        )
    return ratios.pop() if ratios else 1.0


BASE_FOLDER = "base"


def _unsaved_student(peft_model: PeftModel) -> bool:
    """A base built by `student_from_teacher` whose ``name_or_path`` is no saved copy of it."""
    record = student_record(peft_model)
    if not record:
        return False
    saved = Path(str(peft_model.get_base_model().name_or_path or "")) / "config.json"
    return not saved.is_file() or json.loads(saved.read_text()).get(RECORD_KEY) != json.loads(
        json.dumps(record)
    )


def save_adapter(
    peft_model: PeftModel,
    path: str | os.PathLike,
    strength: float | None = None,
    adapter_name: str | None = None,
    **save_kwargs: Any,
) -> Path:
    """``save_pretrained`` with ``strength`` baked into ``lora_alpha`` and ``alpha_pattern``.

    ``strength`` is relative to the trained adapter (default: the strength it runs at now). The saved
    ``adapter_config.json`` is a standard PEFT config; ``hf_enhance.json`` next to it records the strength
    and how the config was built.

    Whatever the adapter's name, its files go directly in ``path`` (PEFT's own ``save_pretrained`` puts a named
    adapter in ``path/<name>/``), so ``PeftModel.from_pretrained(base, path)`` loads it as ``"default"`` and
    ``peft_model.load_adapter(path, adapter_name="task_a")`` loads it under its name. Save several adapters to
    several folders. Returns ``path``.

    A base built by `student_from_teacher` and not loaded from a saved folder exists nowhere on disk, so no name
    would find it: it is saved (without the adapters) to ``path/base`` and ``base_model_name_or_path`` records that
    folder's absolute path, so ``AutoPeftModelForCausalLM.from_pretrained(path)`` loads base and adapter alike.
    """
    name = lora_adapter_name(peft_model, adapter_name)
    strength = _check_strength(get_adapter_strength(peft_model, name) if strength is None else strength)
    trained = peft_model.peft_config[name]
    baked = copy.deepcopy(trained)
    baked.lora_alpha = clean_number(trained.lora_alpha * strength)
    baked.alpha_pattern = {
        key: clean_number(value * strength) for key, value in trained.alpha_pattern.items()
    }
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if _unsaved_student(peft_model):
        base = out / BASE_FOLDER
        copy.deepcopy(peft_model).unload().save_pretrained(base)
        baked.base_model_name_or_path = str(base.resolve())
    peft_model.peft_config[name] = baked
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".save_adapter-") as staging:
            peft_model.save_pretrained(staging, selected_adapters=[name], **save_kwargs)
            # PEFT writes a named adapter to <dir>/<name>/ and its model card to <dir>; flatten both into out
            for folder in (Path(staging) / name, Path(staging)):
                for file in folder.iterdir() if folder.is_dir() else ():
                    if file.is_file():
                        os.replace(file, out / file.name)
    finally:
        peft_model.peft_config[name] = trained

    record = {
        "hf_enhance_version": hf_enhance.__version__,
        "adapter_name": name,
        "strength": strength,
        "trained_lora_alpha": trained.lora_alpha,
        "trained_alpha_pattern": trained.alpha_pattern,
        "lora_config": lora_metadata(trained),
    }
    write_json_atomically(out / METADATA_FILE, record)
    return out
