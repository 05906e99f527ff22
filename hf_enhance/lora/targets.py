"""Resolve a preset to the full names of the modules (and fused expert parameters) it hits in a real model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import nn

from hf_enhance.lora.presets import ARCHITECTURE_ROLES, BUILTIN_PRESETS, ROLES, LoraPreset, Targets
from hf_enhance.modeling import (
    ModelOrConfig,
    ModuleSite,
    head_module_names,
    meta_model,
    model_type,
    module_sites,
)

__all__ = [
    "architecture_roles",
    "list_lora_presets",
    "lora_targets",
    "pattern_matches",
    "register_lora_architecture",
    "register_lora_preset",
    "resolve_targets",
]

_PRESETS: dict[str, LoraPreset] = dict(BUILTIN_PRESETS)
_ARCHITECTURES: dict[str, dict[str, tuple[str, ...]]] = {k: dict(v) for k, v in ARCHITECTURE_ROLES.items()}

_QUERY = {"q", "q_proj", "query", "q_lin", "wq", "to_q"}
_KEY = {"k", "k_proj", "key", "k_lin", "wk", "to_k"}
_VALUE = {"v", "v_proj", "value", "v_lin", "wv", "to_v"}
_FUSED_QKV = {"query_key_value", "c_attn", "wqkv", "in_proj", "qkv"}
_MLP_IN = {"up_proj", "gate_proj", "gate_up_proj", "fc1", "c_fc", "wi", "wi_0", "wi_1", "lin1", "w1", "w3"}
_MLP_IN |= {"dense_h_to_4h", "fc_in", "up"}
_MLP_OUT = {"down_proj", "fc2", "c_proj", "wo", "lin2", "w2", "dense_4h_to_h", "fc_out", "down"}
_ROUTERS = {"gate", "router", "shared_expert_gate"}


def pattern_matches(pattern: str, name: str) -> bool:
    """PEFT's ``alpha_pattern``/``rank_pattern`` rule: ``pattern`` matches the end of ``name`` at a dot."""
    return re.match(rf"(.*\.)?({pattern})$", name) is not None


def list_lora_presets() -> dict[str, str]:
    """Preset name -> one-line description, built-in and registered."""
    return {name: preset.description for name, preset in _PRESETS.items()}


def register_lora_preset(
    name: str, targets: Targets, description: str | None = None, *, overwrite: bool = False
) -> None:
    """Add a preset usable by ``lora_config``/``lora_targets``/``ia3_config``.

    Args:
        name: the preset name.
        targets: ``{model_type: [pattern, ...]}`` with PEFT ``alpha_pattern``-style patterns (a plain module
            name such as ``"q_proj"`` or ``"attn.c_proj"`` matches it in every layer), or a callable
            ``(model) -> iterable of full module names``.
        description: shown by ``list_lora_presets()``.
        overwrite: allow replacing an existing preset of the same name (built-ins included).
    """
    if name in _PRESETS and not overwrite:
        raise ValueError(f"LoRA preset {name!r} already exists; pass overwrite=True to replace it.")
    if not callable(targets):
        if not isinstance(targets, Mapping) or not targets:
            raise TypeError(
                "targets must be a non-empty mapping {model_type: [pattern, ...]} or a callable (model) -> names, "
                f"got {type(targets).__name__}."
            )
        for arch, patterns in targets.items():
            if isinstance(patterns, str) or not patterns:
                raise TypeError(f"targets[{arch!r}] must be a non-empty list of patterns, got {patterns!r}.")
            for pattern in patterns:
                re.compile(pattern)
        targets = {arch: tuple(patterns) for arch, patterns in targets.items()}
    _PRESETS[name] = LoraPreset(name, description or f"registered preset {name!r}", targets=targets)


def register_lora_architecture(
    model_type_name: str, roles: Mapping[str, Sequence[str]], *, overwrite: bool = False
) -> None:
    """Teach every role-based preset a new architecture: ``roles`` maps roles (``ROLES``) to patterns."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"Unknown roles {unknown}; valid roles: {list(ROLES)}.")
    if model_type_name in _ARCHITECTURES and not overwrite:
        raise ValueError(
            f"Architecture {model_type_name!r} is already known; pass overwrite=True to replace it."
        )
    _ARCHITECTURES[model_type_name] = {role: tuple(patterns) for role, patterns in roles.items()}


def _linear_listing(sites: Mapping[str, ModuleSite]) -> str:
    """Distinct module names, with layer indices collapsed, for error messages."""
    seen: dict[str, None] = {}
    for site in sites.values():
        shown = site.name if site.stack is None else f"{site.stack}.<i>.{site.relative_name}"
        seen[shown] = None
    return ", ".join(seen)


def _registration_hint(arch: str | None) -> str:
    if arch is None:
        return (
            "This module has no config.model_type; register a preset that picks names itself: "
            "register_lora_preset('my-preset', lambda model: [name for name in ... if ...])."
        )
    roles = "{'query': ['q_proj'], 'value': ['v_proj'], 'attn_out': ['o_proj'], 'mlp_in': ['up_proj'], ...}"
    return (
        f"Teach all presets this architecture with register_lora_architecture({arch!r}, {roles}), or add one "
        f"preset with register_lora_preset('my-preset', {{{arch!r}: ['q_proj', 'v_proj']}})."
    )


def _infer_role(site: ModuleSite) -> str | None:
    tokens = site.relative_name.lower().split(".")
    leaf, containers = tokens[-1], tokens[:-1]
    for role, names in (("query", _QUERY), ("key", _KEY), ("value", _VALUE), ("qkv", _FUSED_QKV)):
        if leaf in names:
            return role
    if "qkv" in leaf:
        return "qkv"
    if any("attn" in token or "attention" in token for token in containers):
        return "attn_out"
    if leaf in _ROUTERS or "router" in leaf:
        return "router"
    if leaf in _MLP_IN:
        return "mlp_in"
    if leaf in _MLP_OUT:
        return "mlp_out"
    if site.out_features != site.in_features:
        return "mlp_in" if site.out_features > site.in_features else "mlp_out"
    return None


def _infer_roles(model: nn.Module, sites: Mapping[str, ModuleSite]) -> dict[str, list[str]]:
    arch = model_type(model)
    in_blocks = [site for site in sites.values() if site.stack is not None]
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    unknown = []
    for site in in_blocks:
        role = _infer_role(site)
        if role is None:
            unknown.append(f"{site.stack}.<i>.{site.relative_name}")
        elif role in roles:
            roles[role].append(site.name)
    has_attention = any(roles[role] for role in ("query", "value", "qkv"))
    if not in_blocks or unknown or not has_attention:
        why = (
            "no repeated transformer blocks with linear layers"
            if not in_blocks
            else f"cannot tell the role of {sorted(set(unknown))}"
            if unknown
            else "no query/value projections found"
        )
        raise ValueError(
            f"No LoRA role table for model_type {arch!r} and inference failed: {why}. "
            f"Linear modules: {_linear_listing(sites) or 'none'}. {_registration_hint(arch)}"
        )
    return roles


def architecture_roles(model: nn.Module) -> dict[str, list[str]]:
    """Role -> full names of the weights playing it, from the role table or inferred for other types."""
    sites = module_sites(model)
    arch = model_type(model)
    table = _ARCHITECTURES.get(arch) if arch is not None else None
    if table is None:
        return _infer_roles(model, sites)
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    for name in sites:
        role = next((r for r in ROLES if any(pattern_matches(p, name) for p in table.get(r, ()))), None)
        if role is not None:
            roles[role].append(name)
    missing = sorted(role for role, patterns in table.items() if patterns and not roles[role])
    if missing:
        raise ValueError(
            f"The {arch!r} role table names modules this model does not have (roles {missing}); the installed "
            f"transformers may have renamed them. Linear modules: {_linear_listing(sites)}. "
            f"Fix the table with register_lora_architecture({arch!r}, ..., overwrite=True)."
        )
    return roles


def _unknown_preset(preset: str) -> ValueError:
    return ValueError(f"Unknown LoRA preset {preset!r}. Valid presets: {sorted(_PRESETS)}.")


def _from_roles(model: nn.Module, roles: Sequence[str]) -> set[str]:
    by_role = architecture_roles(model)
    wanted = list(roles)
    if {"query", "value"} <= set(wanted) and not (by_role["query"] or by_role["value"]):
        wanted.append("qkv")
    return {name for role in wanted for name in by_role[role]}


def _all_linear(model: nn.Module, sites: Mapping[str, ModuleSite]) -> set[str]:
    heads, _ = head_module_names(model)
    return {name for name in sites if not any(name == h or name.startswith(f"{h}.") for h in heads)}


def _from_patterns(
    model: nn.Module, preset: str, table: Mapping[str, Sequence[str]], sites: Mapping[str, ModuleSite]
) -> set[str]:
    arch = model_type(model)
    if arch not in table:
        raise ValueError(
            f"Preset {preset!r} has no targets for model_type {arch!r}; it covers {sorted(table)}. "
            f"Register them: register_lora_preset({preset!r}, {{{arch!r}: [...]}}, overwrite=True) with the full "
            "mapping, or pick a built-in preset."
        )
    chosen: set[str] = set()
    for pattern in table[arch]:
        hits = {name for name in sites if pattern_matches(pattern, name)}
        if not hits:
            raise ValueError(
                f"Pattern {pattern!r} of preset {preset!r} matches no linear module of this {arch!r} model. "
                f"Linear modules: {_linear_listing(sites)}."
            )
        chosen |= hits
    return chosen


def _from_callable(
    model: nn.Module, preset: str, fn: Callable[[nn.Module], Iterable[str]], sites: Mapping[str, ModuleSite]
) -> set[str]:
    chosen = set(fn(model))
    bad = sorted(chosen - set(sites))
    if bad:
        raise ValueError(
            f"Preset {preset!r} returned names that are not linear modules or expert weights: {bad[:5]}. "
            f"Linear modules: {_linear_listing(sites)}."
        )
    return chosen


def resolve_targets(model: nn.Module, preset: str) -> list[ModuleSite]:
    """The sites ``preset`` hits in ``model`` (already a module), in module order."""
    if preset not in _PRESETS:
        raise _unknown_preset(preset)
    spec = _PRESETS[preset]
    sites = module_sites(model)
    if spec.all_linear:
        chosen = _all_linear(model, sites)
    elif spec.roles:
        chosen = _from_roles(model, spec.roles)
    elif callable(spec.targets):
        chosen = _from_callable(model, preset, spec.targets, sites)
    else:
        chosen = _from_patterns(model, preset, spec.targets, sites)
    if not chosen:
        raise ValueError(
            f"Preset {preset!r} hits no module of this {model_type(model)!r} model. "
            f"Linear modules: {_linear_listing(sites)}."
        )
    return [site for name, site in sites.items() if name in chosen]


def lora_targets(
    model: ModelOrConfig, preset: str = "attention", *, task_type: str | None = None
) -> list[str]:
    """Preview the full module (or expert-parameter) names ``preset`` puts LoRA on.

    ``model`` may be a model, a config or a path to one; configs are built on the meta device, as the
    ``task_type`` model class (PEFT ``TaskType`` value; default from the config, see ``meta_model``).
    """
    if preset not in _PRESETS:
        raise _unknown_preset(preset)
    return [site.name for site in resolve_targets(meta_model(model, task_type), preset)]
