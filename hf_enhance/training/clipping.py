"""Adaptive gradient clipping: AutoClip (percentile of the norm history) and ZClip (z-score of the norm)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

ADAPTIVE_CLIP_METHODS = ("autoclip", "zclip")

# Same guard against division by zero as `torch.nn.utils.clip_grad_norm_`.
_EPS = 1e-6


def _percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of an ascending list, interpolated linearly as `numpy.percentile` does."""
    rank = q / 100.0 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


class AdaptiveGradClip:
    """Gradient-norm clipping whose threshold follows the run's own gradient norms.

    Call `clip_(model.parameters())` after `backward()` and before `optimizer.step()`, once per optimizer step.
    It measures the global L2 norm of the gradients, updates the method's statistics with it, scales the
    gradients down to the threshold if the norm is above it (the same scaling as `torch.nn.utils.clip_grad_norm_`)
    and returns the threshold. Gradients were clipped at that step exactly when the norm was above the returned
    threshold.

    Methods:
        - `"autoclip"` (Seetharaman et al., 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation
          Networks"): the threshold is the `percentile`-th percentile of every gradient norm seen so far, the
          current one included (or of the last `history_size` norms).
        - `"zclip"` (Kumar et al., 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training"): the first
          `warmup_steps` norms set a mean and variance, then tracked as exponential moving averages with factor
          `alpha`. A norm whose z-score `z = (norm - mean) / std` exceeds `z_threshold` is a spike and is clipped to
          `mean + z_threshold**2 / z * std` (a larger spike is clipped harder); the averages are then updated with
          the clipped norm. The returned threshold is `mean + z_threshold * std` on steps without a spike, and
          infinite during warm-up.

    Args:
        method: `"autoclip"` or `"zclip"`.
        percentile: AutoClip percentile in (0, 100]; the paper's default is 10.
        history_size: AutoClip window: only the last `history_size` norms count. `None` keeps the whole run, as in
            the paper (memory and checkpoint size grow by one float per step).
        z_threshold: ZClip z-score above which a norm is a spike.
        alpha: ZClip smoothing factor of the moving mean and variance, in [0, 1).
        warmup_steps: ZClip steps used to initialise the mean and variance; nothing is clipped before.
        max_norm: optional hard ceiling on the threshold, in both methods. `None`: no ceiling.

    A non-finite norm (NaN/inf) cannot be repaired by scaling: it is not recorded and the gradients are left
    alone (stopping on it is `EarlyStopping`'s job). In a data-parallel run every process sees the same
    (all-reduced) gradient norm, so every process computes the same threshold.
    """

    def __init__(
        self,
        method: str = "autoclip",
        *,
        percentile: float = 10.0,
        history_size: int | None = None,
        z_threshold: float = 2.5,
        alpha: float = 0.97,
        warmup_steps: int = 25,
        max_norm: float | None = None,
    ) -> None:
        if method not in ADAPTIVE_CLIP_METHODS:
            raise ValueError(
                f"Unknown adaptive clipping method {method!r}. Valid choices: {', '.join(ADAPTIVE_CLIP_METHODS)}."
            )
        if not 0.0 < percentile <= 100.0:
            raise ValueError(
                f"percentile must be in (0, 100], got {percentile}. AutoClip clips at this percentile of the "
                "gradient-norm history; the paper uses 10."
            )
        if history_size is not None and history_size < 1:
            raise ValueError(f"history_size must be None (whole run) or >= 1, got {history_size}.")
        if not z_threshold > 0.0:
            raise ValueError(f"z_threshold must be > 0, got {z_threshold}. ZClip's default is 2.5.")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}. ZClip's default is 0.97.")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}. ZClip's default is 25.")
        if max_norm is not None and not max_norm > 0.0:
            raise ValueError(f"max_norm must be None (no ceiling) or > 0, got {max_norm}.")
        self.method = method
        self.percentile = percentile
        self.history_size = history_size
        self.z_threshold = z_threshold
        self.alpha = alpha
        self.warmup_steps = warmup_steps
        self.max_norm = max_norm
        # AutoClip: the norms in arrival order (only kept when windowed) and sorted.
        self._window: deque[float] | None = deque() if history_size is not None else None
        self._sorted: list[float] = []
        # ZClip: warm-up norms, then the moving mean and variance.
        self._warmup: list[float] = []
        self._mean: float | None = None
        self._var: float | None = None

    def _autoclip_threshold(self, norm: float) -> float:
        bisect.insort(self._sorted, norm)
        if self._window is not None:
            self._window.append(norm)
            if len(self._window) > self.history_size:  # type: ignore[operator]
                oldest = self._window.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        return _percentile(self._sorted, self.percentile)

    def _zclip_threshold(self, norm: float) -> float:
        if self._mean is None or self._var is None:
            self._warmup.append(norm)
            if len(self._warmup) >= self.warmup_steps:
                self._mean = sum(self._warmup) / len(self._warmup)
                self._var = sum((x - self._mean) ** 2 for x in self._warmup) / len(self._warmup)
                self._warmup = []
            return math.inf
        std = math.sqrt(self._var)
        z = (norm - self._mean) / (std + _EPS)
        if z > self.z_threshold:
            threshold = self._mean + self.z_threshold**2 / z * std
            effective = threshold
        else:
            threshold = self._mean + self.z_threshold * std
            effective = norm
        self._mean = self.alpha * self._mean + (1.0 - self.alpha) * effective
        self._var = self.alpha * self._var + (1.0 - self.alpha) * (effective - self._mean) ** 2
        return threshold

    def _current_threshold(self) -> float:
        """The threshold as it stands, without recording a new norm (used for non-finite norms)."""
        if self.method == "autoclip":
            return _percentile(self._sorted, self.percentile) if self._sorted else math.inf
        if self._mean is None or self._var is None:
            return math.inf
        return self._mean + self.z_threshold * math.sqrt(self._var)

    def update(self, norm: float) -> float:
        """Record this step's gradient norm and return the threshold to clip it to (capped at `max_norm`)."""
        if not math.isfinite(norm):
            threshold = self._current_threshold()
        elif self.method == "autoclip":
            threshold = self._autoclip_threshold(norm)
        else:
            threshold = self._zclip_threshold(norm)
        return threshold if self.max_norm is None else min(threshold, self.max_norm)

    def clip_(
        self,
        parameters: Iterable[torch.Tensor] | torch.Tensor,
        total_norm: float | torch.Tensor | None = None,
    ) -> float:
        """Clip the gradients of `parameters` in place; return the threshold applied.

        `total_norm`: the global L2 norm of the gradients if already known (e.g. from
        `Accelerator.clip_grad_norm_(params, float("inf"))`, which also unscales fp16 gradients and reduces the
        norm over sharded parameters). Computed from `parameters` otherwise.
        """
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        grads = [p.grad for p in params if p.grad is not None]
        if total_norm is None:
            total_norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        norm = float(total_norm)
        threshold = self.update(norm)
        if math.isfinite(norm) and norm > threshold:
            coef = threshold / (norm + _EPS)
            for grad in grads:
                grad.mul_(coef)
        return threshold

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable statistics, for checkpoints."""
        return {
            "method": self.method,
            "norms": list(self._window) if self._window is not None else list(self._sorted),
            "warmup": list(self._warmup),
            "mean": self._mean,
            "var": self._var,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics saved by `state_dict`."""
        if state["method"] != self.method:
            raise ValueError(
                f"Cannot load {state['method']!r} clipping statistics into an {self.method!r} clipper: the "
                "checkpoint was trained with another grad_clip_mode. Resume with the same mode."
            )
        norms = [float(x) for x in state["norms"]]
        if self._window is not None:
            norms = norms[-self.history_size :]  # type: ignore[operator]
            self._window = deque(norms)
        self._sorted = sorted(norms)
        self._warmup = [float(x) for x in state["warmup"]]
        self._mean = state["mean"]
        self._var = state["var"]
