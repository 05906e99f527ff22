"""``lora_config``: a preset and a scaling rule resolved to a plain ``peft.LoraConfig``."""

from __future__ import annotations

import math
from typing import Any

from peft import LoraConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_enhance.lora.patterns import clean_number, module_keys, most_common, pattern_keys, suffix_targets
from hf_enhance.lora.ranks import RankSchedule
from hf_enhance.lora.scaling import ScalingRule, get_lora_scaling
from hf_enhance.lora.targets import resolve_targets
from hf_enhance.modeling import ModelOrConfig, ModuleSite, head_module_names, meta_model, module_sites

__all__ = ["lora_config", "lora_metadata", "model_kwargs", "untargeted_in_blocks"]

_RESOLVED_BY_US = (
    "target_modules",
    "target_parameters",
    "exclude_modules",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
)
_METADATA_ATTR = "_hf_enhance_metadata"


def _alphas(
    sites: list[ModuleSite], ranks: dict[str, int], lora_alpha: float, rule: ScalingRule, use_rslora: bool
) -> dict[str, float]:
    """The ``lora_alpha`` each module needs so PEFT's ``alpha / r`` (or ``alpha / sqrt(r)``) equals its scale."""
    alphas = {}
    for site in sites:
        r = ranks[site.name]
        scale = rule(
            r=r,
            lora_alpha=lora_alpha,
            module_name=site.name,
            layer_index=site.layer_index,
            num_layers=site.num_layers,
        )
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(
                f"Scaling rule returned {scale!r} for {site.name}; it must return a finite number."
            )
        alphas[site.name] = clean_number(scale * (math.sqrt(r) if use_rslora else r))
    return alphas


def untargeted_in_blocks(model: nn.Module, targets: list[str]) -> list[str]:
    """Linear layers inside the transformer blocks that are not targeted: safe to name in exclude_modules."""
    chosen = set(targets)
    return [
        n
        for n, s in module_sites(model).items()
        if s.stack is not None and s.kind == "module" and n not in chosen
    ]


def model_kwargs(model: nn.Module, modules: list[str], user_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``user_kwargs`` plus what the model implies: ``fan_in_fan_out`` for ``Conv1D`` targets and, for task
    models (no LM head), the task heads in ``modules_to_save`` so the trained head is saved with the adapter."""
    kwargs = dict(user_kwargs)
    if "fan_in_fan_out" not in kwargs:
        kwargs["fan_in_fan_out"] = any(isinstance(model.get_submodule(name), Conv1D) for name in modules)
    heads, is_lm_head = head_module_names(model)
    if not is_lm_head and heads:
        kwargs["modules_to_save"] = list(dict.fromkeys([*heads, *(kwargs.get("modules_to_save") or [])]))
    return kwargs


def lora_config(
    model: ModelOrConfig,
    preset: str = "attention",
    r: int | RankSchedule = 8,
    lora_alpha: float = 16,
    scaling: str | ScalingRule = "standard",
    **lora_kwargs: Any,
) -> LoraConfig:
    """Resolve ``preset`` and ``scaling`` on ``model`` into a plain ``peft.LoraConfig``.

    Args:
        model: a model, a config or a path to one (built on the meta device; no weights are read).
        preset: where LoRA goes; see ``list_lora_presets()``.
        r: the rank, or a ``RankSchedule`` giving each layer its own rank (written as ``rank_pattern``).
        lora_alpha: the alpha the scaling rule receives.
        scaling: ``"standard"`` (alpha / r), ``"rslora"`` (alpha / sqrt(r)), ``"constant"`` (alpha), a name
            registered with ``register_lora_scaling``, or such a callable. Per-module scales are written as
            ``alpha_pattern`` entries (``scale * r``).
        **lora_kwargs: any other ``LoraConfig`` field (``lora_dropout``, ``task_type``, ``modules_to_save``...).
            ``task_type`` also picks the model class a config is built as.

    Returns:
        A ``LoraConfig`` with explicit ``target_modules`` (checked against the model's module names),
        ``fan_in_fan_out`` set for GPT-2 style ``Conv1D``, task heads in ``modules_to_save`` for task models,
        and only standard PEFT fields: ``adapter_config.json`` loads in vanilla PEFT.
    """
    clash = sorted(set(_RESOLVED_BY_US) & set(lora_kwargs))
    if clash:
        raise ValueError(
            f"{clash} are what lora_config resolves from preset/scaling/r; drop them, or build a "
            "peft.LoraConfig directly if you want to set them by hand."
        )
    if not isinstance(r, RankSchedule) and (not isinstance(r, int) or isinstance(r, bool) or r < 1):
        raise ValueError(f"r must be a positive int or a RankSchedule, got {r!r}.")
    if not isinstance(lora_alpha, (int, float)) or not math.isfinite(lora_alpha) or lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha!r}.")
    rule = get_lora_scaling(scaling)
    model = meta_model(model, lora_kwargs.get("task_type"))
    sites = resolve_targets(model, preset)

    widest = max(min(site.in_features, site.out_features) for site in sites)
    if isinstance(r, int) and r > widest:
        raise ValueError(
            f"r={r} exceeds the smaller dimension of every module preset {preset!r} targets (at most {widest}): a "
            f"LoRA update B @ A cannot have a rank above it, so the extra parameters would train nothing. Use "
            f"r <= {widest}."
        )
    ranks = r.ranks(sites) if isinstance(r, RankSchedule) else {site.name: r for site in sites}
    use_rslora = scaling == "rslora"
    alphas = _alphas(sites, ranks, lora_alpha, rule, use_rslora)
    default_r, default_alpha = most_common(ranks), most_common(alphas)

    modules = [site.name for site in sites if site.kind == "module"]
    parameters = [site.name for site in sites if site.kind == "parameter"]
    target_keys, exclude_keys = module_keys(
        modules, (name for name, _ in model.named_modules()), untargeted_in_blocks(model, modules)
    )
    kwargs: dict[str, Any] = {
        "target_modules": target_keys,
        "exclude_modules": exclude_keys or None,
        "target_parameters": suffix_targets(parameters, (n for n, _ in model.named_parameters())) or None,
        "rank_pattern": pattern_keys(ranks, default_r, sites),
        "alpha_pattern": pattern_keys(alphas, default_alpha, sites),
        "use_rslora": use_rslora,
    }
    config = LoraConfig(
        r=default_r, lora_alpha=default_alpha, **kwargs, **model_kwargs(model, modules, lora_kwargs)
    )
    setattr(
        config,
        _METADATA_ATTR,
        {
            "preset": preset,
            "scaling": scaling if isinstance(scaling, str) else getattr(scaling, "__name__", repr(scaling)),
            "lora_alpha": lora_alpha,
            "rank_schedule": repr(r) if isinstance(r, RankSchedule) else None,
            "model_type": getattr(getattr(model, "config", None), "model_type", None),
            "targets": [site.name for site in sites],
        },
    )
    return config


def lora_metadata(config: LoraConfig) -> dict[str, Any] | None:
    """How ``lora_config`` built ``config`` (preset, scaling, targets), or None for other configs.

    Kept off the dataclass fields so ``adapter_config.json`` holds only standard PEFT keys; ``save_adapter``
    writes it to a separate ``hf_enhance.json``.
    """
    return getattr(config, _METADATA_ATTR, None)
