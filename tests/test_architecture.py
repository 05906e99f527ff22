"""The layering of the package (docs/architecture.md): what may import what, the trainer's shape, module sizes."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from transformers import Trainer

from hf_enhance.distillation import DistillationTrainer
from hf_enhance.distillation._moved import MOVED
from hf_enhance.training import EnhancedTrainer
from hf_enhance.training.internals import TrainerInternals

PACKAGE = Path(__file__).resolve().parents[1] / "hf_enhance"
MAX_MODULE_LINES = 450


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


def test_objectives_import_torch_only() -> None:
    for path in _files("objectives"):
        outside = {
            name
            for name in _imports(path)
            if name.split(".")[0]
            not in ("torch", "__future__", "dataclasses", "math", "typing", "collections")
            and not name.startswith("hf_enhance.objectives")
        }
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}: objectives/ is a leaf"


@pytest.mark.parametrize("package", ["params", "students"])
def test_params_and_students_import_nothing_from_distillation(package: str) -> None:
    for path in _files(package):
        found = sorted(name for name in _imports(path) if name.startswith("hf_enhance.distillation"))
        assert not found, f"{path.relative_to(PACKAGE)} imports {found}"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("hf_enhance.objectives", ["transformers", "accelerate", "peft", "hf_enhance.distillation"]),
        ("hf_enhance.params", ["hf_enhance.distillation"]),
        ("hf_enhance.students", ["hf_enhance.distillation"]),
    ],
)
def test_importing_a_package_loads_no_layer_above_it(module: str, absent: list[str]) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"import {module} loaded {loaded.strip()}"


def test_the_distillation_trainer_is_composed_not_mixed_in() -> None:
    chain = DistillationTrainer.__mro__[: DistillationTrainer.__mro__.index(Trainer) + 1]
    assert chain == (DistillationTrainer, EnhancedTrainer, TrainerInternals, Trainer)


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_a_moved_module_still_imports_with_a_deprecation_warning(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the module keeps its own identity
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_the_architecture_page_names_every_distillation_and_objectives_module() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    modules = [*_files("objectives"), *_files("distillation")]
    missing = [
        str(path.relative_to(PACKAGE))
        for path in modules
        if path.name not in ("__init__.py", "_moved.py") and path.name not in page
    ]
    assert missing == [], "docs/architecture.md does not list these modules"
