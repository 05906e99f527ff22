"""The record a built student carries in its config: which teacher layers and hidden channels it kept.

`student_from_teacher` writes it; the distillation trainer reads it for its default hidden-state layer map and
to start the width projections aligned. It lives with its writer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hf_enhance.modeling import unwrap

__all__ = ["RECORD_KEY", "student_record"]

RECORD_KEY = "hf_enhance_student"
"""Config attribute (a dict) written by the student builder: ``layers`` = the teacher layers the student kept,
in order; ``hidden_channels`` = the teacher hidden channels it kept (one per student channel)."""


def student_record(model: nn.Module) -> dict[str, Any]:
    """The ``hf_enhance_student`` dict of the (PEFT-unwrapped) model's config; empty when it has none."""
    config = getattr(unwrap(model), "config", None)
    return dict(getattr(config, RECORD_KEY, None) or {})
