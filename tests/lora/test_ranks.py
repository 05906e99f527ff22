"""RankSchedule: depth-dependent ranks that fit a parameter budget."""

from __future__ import annotations

import pytest

from hf_enhance.lora import RankSchedule
from hf_enhance.lora.targets import resolve_targets
from hf_enhance.modeling import meta_model
from tests.lora.tiny import tiny_config


def _sites(layers: int = 12, preset: str = "attention-mlp"):
    return resolve_targets(meta_model(tiny_config("llama", num_hidden_layers=layers)), preset)


def _cost(sites, ranks) -> int:
    return sum(ranks[s.name] * s.cost_per_rank for s in sites)


def _by_layer(sites, ranks) -> list[int]:
    per_layer: dict[int, set[int]] = {}
    for site in sites:
        per_layer.setdefault(site.layer_index, set()).add(ranks[site.name])
    assert all(len(v) == 1 for v in per_layer.values())
    return [per_layer[i].pop() for i in sorted(per_layer)]


@pytest.mark.parametrize(("shape", "ascending"), [("increasing", True), ("decreasing", False)])
def test_shapes_spend_the_uniform_budget(shape: str, ascending: bool) -> None:
    sites = _sites()
    ranks = RankSchedule(shape, r=8).ranks(sites)
    by_layer = _by_layer(sites, ranks)
    assert by_layer == sorted(by_layer, reverse=not ascending)
    assert by_layer[0] != by_layer[-1]
    uniform = 8 * sum(s.cost_per_rank for s in sites)
    assert _cost(sites, ranks) <= uniform
    assert _cost(sites, ranks) > 0.9 * uniform


def test_constant_shape_is_uniform_rank() -> None:
    sites = _sites()
    assert set(RankSchedule("constant", r=8).ranks(sites).values()) == {8}


def test_explicit_budget_and_caps() -> None:
    sites = _sites()
    per_rank = sum(s.cost_per_rank for s in sites)
    ranks = RankSchedule("increasing", budget=4 * per_rank, min_r=2, max_r=5).ranks(sites)
    assert _cost(sites, ranks) <= 4 * per_rank
    assert min(ranks.values()) >= 2 and max(ranks.values()) <= 5
    capped = RankSchedule("constant", r=8, budget=100 * per_rank, max_r=6).ranks(sites)
    assert set(capped.values()) == {6}


def test_callable_shape() -> None:
    sites = _sites(layers=4)
    ranks = RankSchedule(lambda i, n: 3.0 if i == 2 else 1.0, r=6).ranks(sites)
    by_layer = _by_layer(sites, ranks)
    assert by_layer[2] == max(by_layer) and by_layer[0] == by_layer[1] == by_layer[3]


def test_budget_too_small_is_an_error() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        RankSchedule(budget=10).ranks(_sites())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": "zigzag"}, r"Valid shapes: \['constant', 'decreasing', 'increasing'\]"),
        ({"r": 0}, "positive int"),
        ({"min_r": 0}, "positive int"),
        ({"min_r": 4, "max_r": 2}, "must be >= min_r"),
        ({"budget": -5}, "positive parameter count"),
    ],
)
def test_bad_schedules_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankSchedule(**kwargs)


def test_bad_shape_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite and > 0"):
        RankSchedule(lambda i, n: float(i), r=4).ranks(_sites(layers=3))
