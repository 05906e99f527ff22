"""Which Trainer checkpoints are complete: resuming skips one that a kill left half-written."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # Trainer writes it last in every checkpoint


def checkpoint_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why `folder` cannot be resumed from (a kill while it was written), or None when it is complete."""
    path = Path(folder)
    if not path.is_dir():
        return f"{path} is not a folder"
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"it has no {TRAINER_STATE}, which Trainer writes last: saving it was interrupted"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"its {TRAINER_STATE} is cut short or damaged: saving it was interrupted"
    for weights in sorted(path.glob("*.safetensors")):
        try:  # opening checks the header and that the file holds every byte it declares
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for damaged files
            return f"{weights.name} cannot be read ({type(error).__name__}: {error})"
    return None


def _step(folder: Path) -> int:
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def newest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str:
    """The newest `checkpoint-N` of `output_dir` that is complete; newer incomplete ones are skipped with a log line.

    Raises a ValueError that names every checkpoint and why it is unusable when none is complete.
    """
    folders = sorted(
        (p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if _step(p) >= 0),
        key=_step,
        reverse=True,
    )
    skipped = []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            if skipped:
                logger.warning(
                    "Resuming from %s: skipped the newer %s (%s).",
                    folder,
                    ", ".join(name for name, _ in skipped),
                    "; ".join(reason for _, reason in skipped),
                )
            return str(folder)
        skipped.append((folder.name, problem))
    details = "; ".join(f"{name}: {reason}" for name, reason in skipped) or "there is no checkpoint-N folder"
    raise ValueError(
        f"resume_from_checkpoint=True, but {output_dir} holds no complete checkpoint ({details}). Start without "
        "resume_from_checkpoint, or pass the path of a complete checkpoint."
    )
