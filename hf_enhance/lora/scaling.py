"""Scaling rules: how strongly each LoRA update acts, as ``scale`` in ``W0 + scale * B @ A``.

A rule is called once per targeted module with keyword arguments ``r`` (that module's rank), ``lora_alpha``,
``module_name`` (full name), ``layer_index`` (None outside the repeated blocks) and ``num_layers`` (length
of the module's block stack; the deepest stack for modules outside one), and returns the scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ScalingRule", "get_lora_scaling", "list_lora_scalings", "register_lora_scaling"]

ScalingRule = Callable[..., float]


def _standard(*, r: int, lora_alpha: float, **_: object) -> float:
    return lora_alpha / r


def _rslora(*, r: int, lora_alpha: float, **_: object) -> float:
    return lora_alpha / math.sqrt(r)


def _constant(*, lora_alpha: float, **_: object) -> float:
    return lora_alpha


_SCALINGS: dict[str, ScalingRule] = {"standard": _standard, "rslora": _rslora, "constant": _constant}
_DESCRIPTIONS: dict[str, str] = {
    "standard": "alpha / r (Hu et al., 2021; PEFT's default)",
    "rslora": "alpha / sqrt(r) (rank-stabilized LoRA, Kalajdzievski 2023)",
    "constant": "alpha, independent of r",
}


def register_lora_scaling(name: str, fn: ScalingRule, *, overwrite: bool = False) -> None:
    """Register ``fn(*, r, lora_alpha, module_name, layer_index, num_layers) -> float`` as scaling ``name``."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    if name in _SCALINGS and not overwrite:
        raise ValueError(f"LoRA scaling {name!r} already exists; pass overwrite=True to replace it.")
    _SCALINGS[name] = fn
    _DESCRIPTIONS[name] = (fn.__doc__ or f"registered scaling {name!r}").strip().splitlines()[0]


def list_lora_scalings() -> dict[str, str]:
    """Scaling name -> one-line description."""
    return {name: _DESCRIPTIONS[name] for name in _SCALINGS}


def get_lora_scaling(scaling: str | ScalingRule) -> ScalingRule:
    """The rule registered as ``scaling``; a callable is returned unchanged."""
    if callable(scaling):
        return scaling
    if scaling not in _SCALINGS:
        raise ValueError(f"Unknown LoRA scaling {scaling!r}. Valid scalings: {sorted(_SCALINGS)}.")
    return _SCALINGS[scaling]
