"""The benchmarks folder on sys.path, as when a benchmark script runs (`python benchmarks/<script>.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
