"""Per-layer rank schedules under a total LoRA parameter budget, resolved to one rank per module."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hf_enhance.modeling import ModuleSite

__all__ = ["RANK_SHAPES", "RankSchedule"]

RANK_SHAPES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda index, num_layers: 1.0,
    "increasing": lambda index, num_layers: 0.5 + index / max(num_layers - 1, 1),
    "decreasing": lambda index, num_layers: 1.5 - index / max(num_layers - 1, 1),
}
"""Relative rank per layer. ``increasing`` ramps linearly from 0.5x to 1.5x the mean rank, first to last
layer; ``decreasing`` the reverse."""


@dataclass(frozen=True)
class RankSchedule:
    """Rank as a function of depth, scaled to spend (at most) a parameter budget.

    Module ``m`` in layer ``i`` of ``n`` gets ``clamp(round(c * w(i, n)), min_r, max_r)`` where ``w`` is the
    shape normalised to mean 1 over the layers (modules outside the blocks get weight 1) and ``c`` is the
    largest value whose total LoRA parameter count ``sum(r_m * (in_m + out_m))`` fits the budget.

    Example: ``lora_config(model, r=RankSchedule("increasing", r=8))`` spends what uniform ``r=8`` would,
    shifting rank from the first layers to the last.
    """

    shape: str | Callable[[int, int], float] = field(
        default="increasing",
        metadata={
            "help": f"One of {sorted(RANK_SHAPES)} or a callable (layer_index, num_layers) -> weight > 0."
        },
    )
    r: int = field(default=8, metadata={"help": "Reference rank: the default budget is uniform rank r."})
    budget: int | None = field(default=None, metadata={"help": "Total LoRA parameters; None = uniform r's."})
    min_r: int = field(default=1, metadata={"help": "Smallest rank any module gets."})
    max_r: int | None = field(
        default=None, metadata={"help": "Largest rank any module gets (None = no cap)."}
    )

    def __post_init__(self) -> None:
        if not callable(self.shape) and self.shape not in RANK_SHAPES:
            raise ValueError(
                f"Unknown rank schedule shape {self.shape!r}. Valid shapes: {sorted(RANK_SHAPES)}, "
                "or a callable (layer_index, num_layers) -> positive weight."
            )
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"RankSchedule.r must be a positive int, got {self.r!r}.")
        if not isinstance(self.min_r, int) or self.min_r < 1:
            raise ValueError(f"RankSchedule.min_r must be a positive int, got {self.min_r!r}.")
        if self.max_r is not None and self.max_r < self.min_r:
            raise ValueError(f"RankSchedule.max_r ({self.max_r}) must be >= min_r ({self.min_r}).")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"RankSchedule.budget must be a positive parameter count, got {self.budget!r}.")

    def _weights(self, sites: Sequence[ModuleSite]) -> dict[str, float]:
        fn = self.shape if callable(self.shape) else RANK_SHAPES[self.shape]
        stacks: dict[str, int] = {s.stack: s.num_layers for s in sites if s.stack is not None}
        means = {stack: sum(float(fn(i, n)) for i in range(n)) / n for stack, n in stacks.items()}
        weights = {}
        for site in sites:
            if site.stack is None:
                weights[site.name] = 1.0
                continue
            raw = float(fn(site.layer_index, site.num_layers))
            if not (math.isfinite(raw) and raw > 0):
                raise ValueError(
                    f"Rank schedule shape returned {raw!r} for layer {site.layer_index}; weights must be finite "
                    "and > 0."
                )
            weights[site.name] = raw / means[site.stack]
        return weights

    def _ranks_at(self, scale: float, weights: dict[str, float]) -> dict[str, int]:
        cap = self.max_r if self.max_r is not None else math.inf
        return {name: int(min(max(round(scale * w), self.min_r), cap)) for name, w in weights.items()}

    def ranks(self, sites: Sequence[ModuleSite]) -> dict[str, int]:
        """One rank per site, the largest schedule that fits the budget."""
        weights = self._weights(sites)
        cost_per_rank = {site.name: site.cost_per_rank for site in sites}

        def cost(ranks: dict[str, int]) -> int:
            return sum(rank * cost_per_rank[name] for name, rank in ranks.items())

        budget = self.budget if self.budget is not None else self.r * sum(cost_per_rank.values())
        floor = self._ranks_at(0.0, weights)
        if cost(floor) > budget:
            raise ValueError(
                f"Rank budget {budget} is below the minimum {cost(floor)} (every module at min_r={self.min_r}). "
                "Raise the budget, lower min_r, or target fewer modules."
            )
        low, high = 0.0, float(self.r)
        while cost(self._ranks_at(high, weights)) <= budget:
            if self._ranks_at(high, weights) == self._ranks_at(2 * high, weights):
                return self._ranks_at(high, weights)  # every module is at max_r
            low, high = high, 2 * high
        for _ in range(64):
            mid = (low + high) / 2
            low, high = (mid, high) if cost(self._ranks_at(mid, weights)) <= budget else (low, mid)
        return self._ranks_at(low, weights)
