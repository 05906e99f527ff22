"""``ia3_config``: the same preset resolution for (IA)^3, with ``feedforward_modules`` filled in."""

from __future__ import annotations

from typing import Any

from peft import IA3Config

from hf_enhance.lora.config import model_kwargs, untargeted_in_blocks
from hf_enhance.lora.patterns import module_keys
from hf_enhance.lora.targets import architecture_roles, list_lora_presets, resolve_targets
from hf_enhance.modeling import ModelOrConfig, meta_model, module_sites

__all__ = ["IA3_ROLES", "ia3_config"]

IA3_ROLES = ("key", "value", "qkv", "mlp_out")
"""The (IA)^3 paper's choice (Liu et al., 2022): rescale keys, values and the feed-forward activations."""


def ia3_config(model: ModelOrConfig, preset: str = "ia3", **ia3_kwargs: Any) -> IA3Config:
    """Resolve ``preset`` on ``model`` into a plain ``peft.IA3Config``.

    Args:
        model: a model, a config or a path to one (built on the meta device).
        preset: ``"ia3"`` (keys, values, feed-forward down projection) or any LoRA preset name.
        **ia3_kwargs: other ``IA3Config`` fields; ``task_type`` also picks the model class for a config.

    Feed-forward down projections (role ``mlp_out``) go in ``feedforward_modules``: IA3 scales their input,
    i.e. the feed-forward activations; every other target has its output scaled.
    """
    clash = sorted({"target_modules", "feedforward_modules", "exclude_modules"} & set(ia3_kwargs))
    if clash:
        raise ValueError(
            f"{clash} are what ia3_config resolves from the preset; drop them or build IA3Config."
        )
    if preset != "ia3" and preset not in list_lora_presets():
        raise ValueError(
            f"Unknown preset {preset!r}. Valid presets: {sorted(['ia3', *list_lora_presets()])}."
        )
    model = meta_model(model, ia3_kwargs.get("task_type"))
    roles = architecture_roles(model)
    if preset == "ia3":
        chosen = {name for role in IA3_ROLES for name in roles[role]}
        sites = [site for name, site in module_sites(model).items() if name in chosen]
    else:
        sites = resolve_targets(model, preset)
    fused = [site.name for site in sites if site.kind == "parameter"]
    if fused:
        raise ValueError(
            f"Preset {preset!r} hits fused mixture-of-experts weights ({fused[0]}, ...), which PEFT's IA3 cannot "
            "target (only LoRA's target_parameters can). Use preset='attention' for IA3 on this model."
        )
    feedforward = [site.name for site in sites if site.name in set(roles["mlp_out"])]
    others = [site.name for site in sites if site.name not in set(feedforward)]
    universe = [name for name, _ in model.named_modules()]
    excludable = untargeted_in_blocks(model, [site.name for site in sites])
    ff_keys, ff_excludes = module_keys(feedforward, universe, excludable)
    other_keys, other_excludes = module_keys(others, universe, excludable)
    # PEFT tests feedforward keys with a bare endswith (no dot boundary); fall back to full names on a clash.
    if any(name.endswith(key) for name in others for key in ff_keys):
        ff_keys, ff_excludes = feedforward, []
    kwargs = model_kwargs(model, [site.name for site in sites], ia3_kwargs)
    return IA3Config(
        target_modules=other_keys + ff_keys,
        exclude_modules=sorted(set(ff_excludes + other_excludes)) or None,
        feedforward_modules=ff_keys,
        **kwargs,
    )
