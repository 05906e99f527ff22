"""`LossSettings`: the objective's settings (alpha, temperature, divergence, beta, ignore index), checked once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCE_KINDS: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class LossSettings:
    """loss = alpha · T² · D(p_T(teacher), p_T(student)) + (1 − alpha) · CE(student, labels), with D = ``kind``.

    Every objective (`distillation_loss`, `fused_distillation_loss`, `sparse_distillation_loss`, the sharded
    ones) and the trainer validate their settings by building one: an out-of-range value is refused with what to
    pass instead.

    Attributes:
        alpha: weight of the distillation term, in [0, 1]: 1 = pure distillation, 0 = labels only.
        temperature: softening temperature T > 0 of the distillation term; CE always uses T = 1.
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"`` (see `divergence`).
        beta: JSD interpolation in [0, 1]; 0 = forward KL end, 1 = reverse KL end.
        ignore_index: label value that marks a position to skip.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    kind: DivergenceKind = "forward_kl"
    beta: float = 0.5
    ignore_index: int = -100

    def __post_init__(self) -> None:
        for name in ("alpha", "temperature", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"{name}={value!r} is a {type(value).__name__}; it must be a number (e.g. alpha=0.5, "
                    "temperature=2.0, beta=0.5). Pass a float, not a string or None."
                )
        alpha, temperature, beta = self.alpha, self.temperature, self.beta
        if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
            raise ValueError(
                f"alpha={alpha} is outside [0, 1]. alpha weighs the distillation term against the label loss "
                "(loss = alpha * kd + (1 - alpha) * ce); use 1.0 for pure distillation, 0.0 for labels only."
            )
        if not temperature > 0.0 or math.isinf(temperature):
            raise ValueError(
                f"temperature={temperature} must be a finite number > 0: the logits are divided by it before the "
                "softmax. Use 1.0 for the raw distributions; 2.0-4.0 are common choices for distillation."
            )
        if self.kind not in DIVERGENCE_KINDS:
            raise ValueError(
                f"Unknown distillation loss kind {self.kind!r}. Valid choices: {', '.join(DIVERGENCE_KINDS)}."
            )
        if not 0.0 <= beta <= 1.0 or math.isnan(beta):
            raise ValueError(
                f"beta={beta} is outside [0, 1]. It interpolates the JSD mixture M = beta * p_teacher + "
                "(1 - beta) * p_student; 0 gives forward KL, 1 gives reverse KL."
            )

    def for_batch(self, on_policy: bool) -> LossSettings:
        """The settings for one batch: on the student's own samples (on-policy) the label term would only
        reinforce them, so the loss is the teacher's grading alone (alpha = 1)."""
        return dataclasses.replace(self, alpha=1.0) if on_policy else self

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the objective functions (``alpha=..., temperature=..., ...``)."""
        return dataclasses.asdict(self)
