"""Model utilities shared across hf_enhance: meta-device skeletons, linear layers, repeated blocks, and what lies
under a wrapper (`unwrap`) or inside an output (`logits_of`).

Everything here works on a model skeleton built on the ``meta`` device, so no weights are read or allocated:
``meta_model(config)`` of a 70B config costs milliseconds and no memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
import transformers
from peft import PeftModel
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

__all__ = [
    "TASK_MODEL_CLASSES",
    "ModelOrConfig",
    "ModuleSite",
    "check_config",
    "check_weights_present",
    "head_module_names",
    "is_deepspeed_engine",
    "linear_modules",
    "logits_of",
    "max_positions",
    "meta_model",
    "model_type",
    "module_sites",
    "repeated_blocks",
    "unwrap",
]

ModelOrConfig = nn.Module | PretrainedConfig | str | PathLike

# PEFT ``TaskType`` values -> the transformers auto class whose module tree that task trains.
TASK_MODEL_CLASSES: dict[str, type] = {
    "CAUSAL_LM": AutoModelForCausalLM,
    "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM,
    "SEQ_CLS": AutoModelForSequenceClassification,
    "TOKEN_CLS": AutoModelForTokenClassification,
    "QUESTION_ANS": AutoModelForQuestionAnswering,
    "FEATURE_EXTRACTION": AutoModel,
    "MASKED_LM": AutoModelForMaskedLM,
}

_LINEAR_TYPES = (nn.Linear, Conv1D)


def _model_class(config: PretrainedConfig, task: str | None) -> type:
    if task is not None:
        key = str(getattr(task, "value", task)).upper()
        if key not in TASK_MODEL_CLASSES:
            raise ValueError(
                f"Unknown task {task!r}. Valid tasks (PEFT TaskType values): {sorted(TASK_MODEL_CLASSES)}. "
                "Pass one of them, or pass a model instead of a config."
            )
        return TASK_MODEL_CLASSES[key]
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


# Sizes a config may declare, each a positive integer; layers capped so a typo cannot build for hours.
_SIZES = ("hidden_size", "n_embd", "d_model", "vocab_size", "intermediate_size", "n_inner", "num_attention_heads",
          "n_head", "num_key_value_heads", "num_hidden_layers", "n_layer", "num_layers", "head_dim")  # fmt: skip
_LAYER_SIZES = ("num_hidden_layers", "n_layer", "num_layers")
MAX_LAYERS = 10_000
MAX_WIDTH = 2**24


def check_config(config: PretrainedConfig) -> None:
    """Refuse a config whose sizes no model can have, before a skeleton is built: what is wrong and the fix.

    Sizes must be positive integers (layers at most `MAX_LAYERS`, widths at most `MAX_WIDTH`), and the attention
    heads must divide the width when the config gives no ``head_dim`` of its own.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    problems = []
    for name in _SIZES:
        value = getattr(text, name, None)
        if value is None:
            continue
        limit = MAX_LAYERS if name in _LAYER_SIZES else MAX_WIDTH
        values = value if isinstance(value, (list, tuple)) else [value]  # per-layer sizes in some configs
        if not all(not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= limit for v in values):
            problems.append(f"{name}={value!r} (a whole number from 1 to {limit:,})")
    width = next(
        (getattr(text, n) for n in ("hidden_size", "n_embd", "d_model") if getattr(text, n, None)), None
    )
    heads = next(
        (getattr(text, n) for n in ("num_attention_heads", "n_head") if getattr(text, n, None)), None
    )
    if (
        not problems
        and isinstance(width, int)
        and isinstance(heads, int)
        and getattr(text, "head_dim", None) is None
        and width % heads
    ):
        problems.append(f"{heads} attention heads do not divide the width {width}")
    if problems:
        raise ValueError(
            f"The {getattr(text, 'model_type', 'model')!r} config cannot describe a model: {'; '.join(problems)}. "
            "Fix those values in the config (config.json), or pass a model name from the zoo (--list)."
        )


def meta_model(model_or_config: ModelOrConfig, task: str | None = None) -> nn.Module:
    """Return ``model_or_config`` if it is a model, else a weightless skeleton of it on the meta device.

    Args:
        model_or_config: a ``torch.nn.Module`` (returned unchanged), a ``PretrainedConfig``, or a local path /
            hub id of one (only ``config.json`` is read).
        task: PEFT ``TaskType`` value (``"CAUSAL_LM"``, ``"SEQ_CLS"``, ...) choosing the model class for a
            config. Default: the config's ``architectures``, else seq2seq LM for encoder-decoders, masked LM for
            encoder-only types, causal LM otherwise.
    """
    if isinstance(model_or_config, nn.Module):
        if hasattr(model_or_config, "peft_config"):
            raise TypeError(
                "Got a PEFT model; target resolution needs the base model's module names. "
                "Pass the model before get_peft_model(), or peft_model.get_base_model() of an unmerged copy."
            )
        return model_or_config
    if isinstance(model_or_config, (str, PathLike)):
        model_or_config = AutoConfig.from_pretrained(model_or_config)
    if not isinstance(model_or_config, PretrainedConfig):
        raise TypeError(
            f"Expected a torch.nn.Module, a transformers PretrainedConfig or a path to one, got "
            f"{type(model_or_config).__name__}."
        )
    check_config(model_or_config)
    cls = _model_class(model_or_config, task)
    build = getattr(cls, "from_config", None) or cls._from_config  # auto classes / concrete model classes
    with torch.device("meta"):
        return build(model_or_config)


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type``, or None for a plain torch module."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` (subclasses included) and GPT-2 style ``Conv1D``, by full module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _LINEAR_TYPES)}


def repeated_blocks(model: nn.Module) -> dict[str, nn.ModuleList]:
    """The outermost ``ModuleList``s whose every block holds linear layers: the transformer stacks.

    A decoder-only model has one (``model.layers``); an encoder-decoder has two (``encoder.block`` and
    ``decoder.block``). Blocks may differ in class (hybrid attention/SSM stacks). Lists nested inside a
    stack (T5's per-block sublayers, per-block expert lists) are not returned.
    """
    found: dict[str, nn.ModuleList] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        if all(_has_weights(child) for child in module):
            found[name] = module
    return found


def _has_weights(block: nn.Module) -> bool:
    """Whether ``block`` holds a linear layer or fused mixture-of-experts weights (3-D parameters)."""
    return any(isinstance(sub, _LINEAR_TYPES) for sub in block.modules()) or any(
        param.dim() == 3 for param in block.parameters()
    )


@dataclass(frozen=True)
class ModuleSite:
    """Where a LoRA-able weight sits: full name, its stack, its layer index and its name inside the block.

    ``kind`` is ``"module"`` for linear layers (``target_modules``) and ``"parameter"`` for fused expert
    weights (``target_parameters``). ``cost_per_rank`` is the number of LoRA parameters one unit of rank adds.
    """

    name: str
    kind: str
    stack: str | None
    layer_index: int | None
    num_layers: int
    relative_name: str
    in_features: int
    out_features: int
    cost_per_rank: int


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return int(module.in_features), int(module.out_features)


def module_sites(model: nn.Module) -> dict[str, ModuleSite]:
    """All linear layers and fused expert weights of ``model``, with their position in the block structure."""
    stacks = repeated_blocks(model)
    deepest = max((len(stack) for stack in stacks.values()), default=0)

    def locate(name: str) -> tuple[str | None, int | None, int, str]:
        for stack_name, stack in stacks.items():
            match = re.match(rf"{re.escape(stack_name)}\.(\d+)\.(.+)$", name)
            if match:
                return stack_name, int(match.group(1)), len(stack), match.group(2)
        return None, None, deepest, name

    sites: dict[str, ModuleSite] = {}
    for name, module in linear_modules(model).items():
        n_in, n_out = _shape(module)
        sites[name] = ModuleSite(name, "module", *locate(name), n_in, n_out, n_in + n_out)
    for module_name, module in model.named_modules():
        if isinstance(module, _LINEAR_TYPES) or module is model:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() != 3:
                continue
            name = f"{module_name}.{param_name}"
            experts, d_out, d_in = (int(size) for size in param.shape)
            sites[name] = ModuleSite(name, "parameter", *locate(name), d_in, d_out, experts * (d_in + d_out))
    return sites


def head_module_names(model: nn.Module) -> tuple[list[str], bool]:
    """Top-level children that form the output head(s), and whether the head is a language-model head.

    Heads are the children of a ``*For*`` model outside its base model that hold parameters (``lm_head``,
    ``classifier``, ``score``, ``pre_classifier``...); when the base model is the model itself (T5), only the
    output embedding. The second value is True when the model has output embeddings (an LM head, which is
    usually tied and never worth training), False for task heads (which a fine-tune must train and save).
    """
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    base = getattr(model, "base_model", model)
    heads = [
        name
        for name, child in model.named_children()
        if child is not base and base is not model and any(True for _ in child.parameters())
    ]
    if output is not None:
        output_name = next(name for name, module in model.named_modules() if module is output)
        if not any(output_name == head or output_name.startswith(f"{head}.") for head in heads):
            heads.append(output_name)
    return heads, output is not None


def is_deepspeed_engine(model: Any) -> bool:
    """Whether ``model`` is a DeepSpeed engine (which wraps the model in ``.module``)."""
    return type(model).__module__.startswith("deepspeed")


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DeepSpeed engine and a PEFT wrapper (wrappers have no task-specific class name)."""
    if is_deepspeed_engine(model):
        model = model.module
    return model.get_base_model() if isinstance(model, PeftModel) else model


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, an object or dict with `logits`, or a tuple whose first item is."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        f"Cannot find logits in a model output of type {type(outputs).__name__}. The student and teacher must "
        "return a logits tensor, a tuple starting with it, or an object with a `.logits` attribute."
    )


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the (unwrapped) model's config declares it takes (``max_position_embeddings`` or
    GPT-2's ``n_positions``), or None when it declares none."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_weights_present(teacher: nn.Module) -> None:
    """Refuse a teacher with parameters on the meta device: there is nothing to compute (or shard) with."""
    on_meta = [name for name, p in teacher.named_parameters() if p.device.type == "meta"]
    if on_meta:
        raise ValueError(
            f"The teacher has {len(on_meta)} parameter(s) on the meta device (first: {on_meta[0]}): they have no "
            "values to compute with (a model built under init_empty_weights or loaded with device_map='meta'). "
            "Load the teacher with its weights, e.g. from_pretrained(name) without an empty-weights context."
        )
