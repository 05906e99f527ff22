"""``count_parameters``: what ``get_peft_model`` would train, counted on a weightless meta-device skeleton.

The model is built (or copied) on the ``meta`` device and PEFT itself is applied to it, so the count is
PEFT's own ``get_nb_trainable_parameters()`` for any method and option PEFT supports, with no weights
allocated and nothing read from the hub.
"""

from __future__ import annotations

import copy
import gc
import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from peft import IA3Config, LoraConfig, PeftConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.models.auto import modeling_auto
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module

from hf_enhance.lora import RankSchedule, ia3_config, lora_config, prefix_tuning_config
from hf_enhance.modeling import linear_modules, meta_model
from hf_enhance.params.memory import TensorGroup, nf4_bytes
from hf_enhance.params.names import METHODS
from hf_enhance.params.result import ParameterCount
from hf_enhance.params.zoo import MODEL_ZOO, zoo_config

__all__ = ["METHODS", "count_parameters"]

_METHOD_NAMES = {"LORA": "lora", "IA3": "ia3", "PREFIX_TUNING": "prefix"}
DEFAULT_RANK = 8
DEFAULT_VIRTUAL_TOKENS = 20


# PEFT TaskType -> transformers' model_type -> class-name table, to tell which task a model instance serves.
_TASK_CLASS_NAMES = {
    "CAUSAL_LM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "SEQ_2_SEQ_LM": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    "SEQ_CLS": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "TOKEN_CLS": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    "QUESTION_ANS": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
}


def _task_type_of(model: nn.Module) -> str:
    """The PEFT ``TaskType`` whose auto class builds ``type(model)``; FEATURE_EXTRACTION for any other model
    (a masked LM, a bare encoder), which is the PEFT wrapper that accepts every model."""
    arch = getattr(getattr(model, "config", None), "model_type", None)
    for task, names in _TASK_CLASS_NAMES.items():
        entry = names.get(arch, ())
        if type(model).__name__ in ((entry,) if isinstance(entry, str) else entry):
            return task
    return "FEATURE_EXTRACTION"


@contextmanager
def _quiet_and_gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while thousands of modules are created (on a 70B config a third of the time
    otherwise goes to collections that free nothing), and hide two notices the user cannot act on here."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            # PEFT fixes the flag itself for GPT-2's Conv1D; the count does not depend on it.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
            yield
    finally:
        if was_enabled:
            gc.enable()


_QUANTIZED_PARAMETERS = {"Params4bit", "Int8Params"}


def _meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (ties preserved)."""
    quantized = sorted({type(p).__name__ for p in module.parameters()} & _QUANTIZED_PARAMETERS)
    if getattr(module, "is_quantized", False) or quantized:
        raise ValueError(
            f"Cannot count a quantized model ({', '.join(quantized) or 'is_quantized=True'}): its packed weights "
            "do not have the original shapes. Pass its config instead (model.config); the qlora memory setup "
            "accounts for the 4-bit base."
        )
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
        )
    return copy.deepcopy(module, memo)


def _skeleton(
    model_or_config: nn.Module | PretrainedConfig | str | PathLike, task_type: str | None
) -> nn.Module:
    if isinstance(model_or_config, str) and model_or_config in MODEL_ZOO:
        model_or_config = zoo_config(model_or_config)
    elif isinstance(model_or_config, (str, PathLike)) and not Path(model_or_config).exists():
        raise ValueError(
            f"{str(model_or_config)!r} is not a model name in MODEL_ZOO nor a local config path. Zoo names: "
            f"{', '.join(MODEL_ZOO)}. For another model pass its config, or download its config.json "
            "(`hf download REPO config.json`) and pass that path: counting never downloads."
        )
    if isinstance(model_or_config, nn.Module):
        return _meta_copy(meta_model(model_or_config))
    return meta_model(model_or_config, task_type)


def _quantizable(model: nn.Module) -> set[int]:
    """ids of the weights transformers' bitsandbytes integration would store in 4-bit."""
    skip: list[str] | None = None
    if isinstance(model, PreTrainedModel):
        skip = get_keys_to_not_convert(model) + list(model._keep_in_fp32_modules or ())
    return {
        id(module.weight)
        for name, module in model.named_modules()
        if (isinstance(module, Conv1D) or type(module) is nn.Linear) and should_convert_module(name, skip)
    }


def _reject(context: str, fix: str, **given: Any) -> None:
    """Refuse arguments that would be silently ignored in ``context``."""
    passed = sorted(name for name, value in given.items() if value is not None)
    if passed:
        raise ValueError(f"{passed} do not apply to {context}, so they would be ignored. {fix}")


def _check_explicit_config(
    peft_config: PeftConfig,
    method: str | None,
    preset: str | None,
    target_modules: str | Sequence[str] | None,
    r: int | RankSchedule | None,
    task_type: str | None,
    peft_kwargs: dict[str, Any],
) -> None:
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peft.PeftConfig, got {type(peft_config).__name__}.")
    _reject(
        "an explicit peft_config",
        "Set them on the PEFT config instead.",
        preset=preset,
        target_modules=target_modules,
        r=r,
        task_type=task_type,
        **peft_kwargs,
    )
    config_method = _METHOD_NAMES.get(peft_config.peft_type.value, str(peft_config.peft_type.value).lower())
    if method is not None and method != config_method:
        raise ValueError(
            f"method={method!r} contradicts peft_config, a {config_method!r} config; drop method."
        )


def _build_peft_config(
    model: nn.Module,
    method: str,
    preset: str | None,
    target_modules: str | Sequence[str] | None,
    r: int | RankSchedule | None,
    task_type: str | None,
    peft_kwargs: dict[str, Any],
) -> PeftConfig | None:
    if preset is not None and target_modules is not None:
        raise ValueError(
            f"Got both preset={preset!r} and target_modules: a preset chooses the target modules. Pass one of them."
        )
    lora_only = "preset, target_modules and r configure LoRA (method='lora'); drop them or switch method."
    if method == "full":
        _reject(
            "full fine-tuning",
            "Full fine-tuning trains every parameter and takes no PEFT options; drop them or pick a PEFT method.",
            preset=preset,
            target_modules=target_modules,
            r=r,
            **peft_kwargs,
        )
        return None
    if task_type is not None:
        peft_kwargs = {**peft_kwargs, "task_type": task_type}
    if method == "prefix":
        _reject("prefix tuning", lora_only, preset=preset, target_modules=target_modules, r=r)
        peft_kwargs.setdefault("task_type", _task_type_of(model))
        if "budget" not in peft_kwargs:
            peft_kwargs.setdefault("num_virtual_tokens", DEFAULT_VIRTUAL_TOKENS)
        return prefix_tuning_config(model, **peft_kwargs)
    if method == "ia3":
        _reject("IA3", "IA3 has no rank: drop r.", r=r)
        if preset is not None:
            return ia3_config(model, preset=preset, **peft_kwargs)
        return IA3Config(target_modules=target_modules, **peft_kwargs)
    r = DEFAULT_RANK if r is None else r
    if preset is not None:
        return lora_config(model, preset=preset, r=r, **peft_kwargs)
    return LoraConfig(r=r, target_modules=target_modules, **peft_kwargs)


def _owner(name: str, owners: set[str]) -> str:
    """The adapter-holding module a parameter belongs to, else the module that holds it."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in owners:
            return prefix
    return ".".join(parts[:-1])


def _breakdown(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per module, named as in the base model (PEFT's prefix removed)."""
    owners = {
        name
        for name, module in model.named_modules()
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))
    }
    modules: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = _owner(name, owners).removeprefix("base_model.model.")
            modules[key] = modules.get(key, 0) + param.numel()
    return modules


def _tensor_groups(model: nn.Module, quantizable: set[int]) -> tuple[TensorGroup, ...]:
    sums: dict[tuple[bool, bool, bool, bool, int], list[int]] = {}
    tensors = itertools.chain(
        ((p, False) for _, p in model.named_parameters()), ((b, True) for _, b in model.named_buffers())
    )
    for tensor, is_buffer in tensors:
        quant = id(tensor) in quantizable
        key = (is_buffer, tensor.requires_grad and not is_buffer, tensor.is_floating_point(), quant)
        entry = sums.setdefault((*key, tensor.element_size()), [0, 0])
        entry[0] += tensor.numel()
        entry[1] += nf4_bytes(tensor.numel()) if quant else 0
    return tuple(TensorGroup(*key, numel, nf4) for key, (numel, nf4) in sums.items())


def _check_lora_values(peft_config: PeftConfig, model: nn.Module) -> None:
    rank = getattr(peft_config, "r", None)
    linears = [
        min(m.weight.shape) for m in linear_modules(model).values() if getattr(m, "weight", None) is not None
    ]
    if isinstance(rank, int) and linears and rank > max(linears):
        raise ValueError(
            f"LoRA rank r={rank} exceeds the smaller dimension ({max(linears)}) of every linear layer of the "
            f"model: B @ A cannot have a rank above it, so the extra parameters add nothing. Use "
            f"r <= {max(linears)} (typical: 4-64)."
        )
    alpha = getattr(peft_config, "lora_alpha", None)
    if isinstance(alpha, (int, float)) and not math.isfinite(alpha):
        raise ValueError(
            f"lora_alpha={alpha} is not a finite number: the adapter's output is scaled by alpha / r, so every "
            "update would be NaN or infinite. Use a finite alpha, e.g. 2 * r."
        )


def _check_lora_ranks(peft_model: nn.Module) -> None:
    """A rank above a layer's smaller dimension adds parameters but no capacity: refuse it, naming the layer."""
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        smaller = min(module.in_features, module.out_features)
        for adapter, rank in module.r.items():
            if rank > smaller:
                raise ValueError(
                    f"LoRA rank r={rank} exceeds the smaller dimension ({smaller}) of {name} "
                    f"({module.in_features} -> {module.out_features}) for adapter {adapter!r}: B @ A has rank at "
                    f"most {smaller}, so the extra parameters add nothing. Use r <= {smaller} (typical: 4-64)."
                )


def count_parameters(
    model_or_config: nn.Module | PretrainedConfig | str | PathLike,
    *,
    method: str | None = None,
    preset: str | None = None,
    target_modules: str | Sequence[str] | None = None,
    r: int | RankSchedule | None = None,
    peft_config: PeftConfig | None = None,
    task_type: str | None = None,
    **peft_kwargs: Any,
) -> ParameterCount:
    """Count what a fine-tuning choice trains, exactly as ``get_peft_model(...).get_nb_trainable_parameters()``.

    The model is built on the meta device (a passed model is copied there; it is never modified), so a
    70B config costs no memory and nothing is downloaded.

    Args:
        model_or_config: a model, a ``PretrainedConfig``, a name from ``MODEL_ZOO`` (``"llama-2-70b"``) or a
            local path to a config.
        method: ``"lora"`` (default), ``"ia3"``, ``"prefix"`` or ``"full"``; with ``peft_config``, its method.
        preset: LoRA preset from ``hf_enhance.lora`` (``"attention-qv"``, ``"attention"``, ``"mlp"``,
            ``"attention-mlp"``, ``"all-linear"``...), resolved by ``hf_enhance.lora.lora_config``.
        target_modules: PEFT ``target_modules`` for LoRA/IA3 (e.g. ``["q_proj", "v_proj"]`` or ``"all-linear"``);
            with neither this nor ``preset``, PEFT's default targets for the architecture.
        r: LoRA rank (default 8), or a ``hf_enhance.lora.RankSchedule`` with ``preset``.
        peft_config: count this PEFT config as is (any PEFT method) instead of building one.
        task_type: PEFT ``TaskType`` (``"CAUSAL_LM"``, ``"SEQ_CLS"``...): picks the model class for a config and
            is set on the PEFT config. Prefix tuning infers it from the model when not given.
        **peft_kwargs: other fields of the PEFT config (``lora_alpha``, ``bias``, ``modules_to_save``,
            ``use_dora``, ``feedforward_modules``, ``num_virtual_tokens`` (default 20), ``scaling`` for presets...).

    Returns:
        A ``ParameterCount`` with ``total``, ``trainable``, ``trainable_fraction``, ``modules`` (trainable
        parameters per module), ``by_module_type()``, ``memory(setup)`` and the ``peft_config`` counted.
    """
    if peft_config is not None:
        _check_explicit_config(peft_config, method, preset, target_modules, r, task_type, peft_kwargs)
    elif method is not None and method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Valid methods: {list(METHODS)} (or pass peft_config=).")
    with _quiet_and_gc_paused():
        model = _skeleton(model_or_config, task_type)
        # Loaded in bfloat16, so PEFT's adapter upcasting shows in the dtypes the memory estimate reads.
        model.to(torch.bfloat16)
        quantizable = _quantizable(model)
        if peft_config is None:
            peft_config = _build_peft_config(
                model, method or "lora", preset, target_modules, r, task_type, peft_kwargs
            )
        elif peft_config.is_prompt_learning and peft_config.task_type is None:
            raise ValueError(
                f"peft_config ({type(peft_config).__name__}) has no task_type, which PEFT needs for prompt "
                f"learning. Set task_type={_task_type_of(model)!r} (the task of {type(model).__name__})."
            )
        if peft_config is None:
            counted = model.requires_grad_(True)
            trainable = total = sum(p.numel() for p in model.parameters())
            method = "full"
        else:
            _check_lora_values(peft_config, model)
            with torch.device("meta"), no_init_weights():
                counted = get_peft_model(model, peft_config)
            _check_lora_ranks(counted)
            trainable, total = counted.get_nb_trainable_parameters()
            method = _METHOD_NAMES.get(peft_config.peft_type.value, str(peft_config.peft_type.value).lower())
        name = model_or_config if isinstance(model_or_config, str) else type(model).__name__
        return ParameterCount(
            name,
            method,
            total,
            trainable,
            _breakdown(counted),
            _tensor_groups(counted, quantizable),
            peft_config,
        )
