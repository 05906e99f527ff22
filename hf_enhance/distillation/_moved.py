"""Module paths that moved when distillation was restructured (issue #28), importable for one more release.

``import hf_enhance.distillation.losses`` still works: it warns (`DeprecationWarning`) and returns the module at
its new path, the very same module object, so monkeypatching either name patches both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "hf_enhance.distillation.losses": "hf_enhance.objectives.losses",
    "hf_enhance.distillation.fused": "hf_enhance.objectives.fused",
    "hf_enhance.distillation.vocab": "hf_enhance.objectives.vocab",
    "hf_enhance.distillation.sparse": "hf_enhance.objectives.sparse",
    "hf_enhance.distillation.students": "hf_enhance.students.gru",
    "hf_enhance.distillation.lm_cache": "hf_enhance.distillation.sources.lm_cache",
    "hf_enhance.distillation.classifier_cache": "hf_enhance.distillation.sources.classifier_cache",
    "hf_enhance.distillation.data": "hf_enhance.distillation.sources.teacher_texts",
    "hf_enhance.distillation.hidden": "hf_enhance.distillation.placement.heads",
    "hf_enhance.distillation.sharded": "hf_enhance.distillation.placement.fsdp2",
    "hf_enhance.distillation.zero3": "hf_enhance.distillation.placement.zero3",
    "hf_enhance.distillation.intermediate": "hf_enhance.distillation.terms.blocks",
    "hf_enhance.distillation.hidden_trainer": "hf_enhance.distillation.terms.hidden_states",
    "hf_enhance.distillation.on_policy": "hf_enhance.distillation.terms.on_policy",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of `MOVED` and loads it as the module at the new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old path goes away in the next release).",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._specs[new] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the old path's spec on the module; it keeps its own.
        module.__spec__ = self._specs[module.__name__]


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
