"""Write resolved per-module values as PEFT keys: ``target_modules`` suffixes and ``rank/alpha_pattern`` keys.

PEFT matches ``target_modules`` list entries as dotted suffixes (``name == key or name.endswith("." + key)``)
and ``rank_pattern``/``alpha_pattern`` keys as regexes anchored at a dot (``(.*\\.)?(key)$``, first match
wins). Keys written here are the shortest ones that hit exactly the intended set, so the config stays short,
readable, and valid for the same architecture under another head (``model.`` vs no prefix).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

from hf_enhance.lora.targets import pattern_matches
from hf_enhance.modeling import ModuleSite

__all__ = ["clean_number", "module_keys", "most_common", "pattern_keys", "suffix_targets"]


def clean_number(value: float) -> float | int:
    """Round away float noise (16 / sqrt(8) * sqrt(8) -> 16) so equal values compare equal and print short."""
    value = round(float(value), 9)
    return int(value) if value.is_integer() else value


def _suffixes(name: str) -> list[str]:
    """Dotted suffixes of ``name``, shortest first, never starting at a layer index."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1) if not parts[i].isdigit()]


def _hits(key: str, names: Sequence[str]) -> set[str]:
    """Names PEFT's ``target_modules`` list rule matches with ``key``."""
    return {n for n in names if n == key or n.endswith(f".{key}")}


def suffix_targets(selected: Sequence[str], universe: Iterable[str]) -> list[str]:
    """Shortest dotted suffixes that, under PEFT's ``target_modules`` list rule, hit exactly ``selected``.

    ``universe`` is every name PEFT will test (all module names, or all parameter names).
    """
    wanted = set(selected)
    names = list(universe)
    keys: dict[str, None] = {}
    hit: set[str] = set()
    for name in selected:
        if name not in hit:
            key = next(s for s in _suffixes(name) if _hits(s, names) <= wanted)
            keys[key] = None
            hit |= _hits(key, names)
    return list(keys)


def module_keys(
    selected: Sequence[str], universe: Iterable[str], excludable: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """``(target_modules, exclude_modules)`` keys that hit exactly ``selected``, whichever form is shorter.

    The exact form uses only ``suffix_targets``. The exclude form may use a broader key whose extra hits are
    all in ``excludable`` (untargeted linear layers inside the transformer blocks) and lists those in
    ``exclude_modules``: BERT's MLP is ``["intermediate.dense", "output.dense"]`` minus
    ``["attention.output.dense"]`` instead of one ``layer.<i>.output.dense`` key per layer.
    """
    names = list(universe)
    exact = suffix_targets(selected, names)
    allowed = set(selected) | set(excludable)
    keys: dict[str, None] = {}
    hit: set[str] = set()
    for name in selected:
        if name in hit:
            continue
        key = next(s for s in _suffixes(name) if _hits(s, names) <= allowed)
        keys[key] = None
        hit |= _hits(key, names)
    unwanted = sorted(hit - set(selected))
    excludes = suffix_targets(unwanted, names) if unwanted else []
    if len(keys) + len(excludes) < len(exact):
        return list(keys), excludes
    return exact, []


def _candidates(site: ModuleSite) -> list[str]:
    """Regex keys for ``site``, broadest first: module family, whole layer, layer + module, ..., full name."""
    keys = [re.escape(suffix) for suffix in _suffixes(site.name)]
    if site.stack is None:
        return keys
    family = [re.escape(suffix) for suffix in _suffixes(site.relative_name)]
    layer = re.escape(f"{site.stack.rsplit('.', 1)[-1]}.{site.layer_index}") + r"\..*"
    return family + [layer] + [key for key in keys if key not in family]


def most_common(values: Mapping[str, Hashable]) -> Hashable:
    """The most frequent value (first seen wins ties): the global default the patterns deviate from."""
    return Counter(values.values()).most_common(1)[0][0]


def pattern_keys(
    values: Mapping[str, float], default: float, sites: Sequence[ModuleSite]
) -> dict[str, float]:
    """``{key: value}`` for every targeted name whose value differs from ``default``.

    Each key matches (PEFT's rule) only targeted names that share its value, so the first-match order PEFT
    uses cannot pick a wrong entry and names at ``default`` are matched by none.
    """
    targeted = [site.name for site in sites]
    keys: dict[str, float] = {}
    uniform: dict[tuple[str, float], bool] = {}
    for site in sites:
        value = values[site.name]
        if value == default or any(pattern_matches(key, site.name) for key in keys):
            continue
        for key in _candidates(site):
            if (key, value) not in uniform:
                uniform[key, value] = all(values[n] == value for n in targeted if pattern_matches(key, n))
            if uniform[key, value]:
                keys[key] = value
                break
    return keys
