"""The ``hf-enhance`` command answers --help and refuses bad arguments without importing torch; the light name
lists it offers mirror the registries they stand for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_enhance.lora.presets import BUILTIN_PRESETS
from hf_enhance.params import MODEL_ZOO
from hf_enhance.params.names import LORA_PRESET_NAMES, MODEL_NAMES

PROBE = """
import sys
from hf_enhance.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    print("exit", stop.code)
print("heavy:", sorted(name for name in ("torch", "transformers", "peft") if name in sys.modules))
"""


def test_the_light_names_are_the_registries() -> None:
    assert tuple(MODEL_ZOO) == MODEL_NAMES
    assert tuple(BUILTIN_PRESETS) == LORA_PRESET_NAMES


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["--help"], 0), (["params", "--help"], 0), (["plan", "--help"], 0), (["plan", "--gpus", "two"], 2)],
)
def test_help_and_argument_errors_import_no_torch(argv: list[str], code: int) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert f"exit {code}" in result.stdout
    assert "heavy: []" in result.stdout
