"""Every ```python block of README.md and docs/*.md runs, and `mkdocs build --strict` passes.

Blocks run in page order in one namespace per page (a page's later blocks may use what its earlier ones built),
in a temporary working directory, with the hub switched off. A block preceded by a marker comment such as
`<!-- requires: gpu -->` or `<!-- requires: hub -->` (blank lines allowed in between) is not run, and the test
reports it as skipped with that reason. ```bash and other blocks are never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
REQUIRES = {"gpu", "hub"}
MARKER = re.compile(r"^<!--\s*requires:\s*([\w\-, ]+?)\s*-->$")
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, set[str]]]:
    """(first line number, code, requirements) of each ```python block of a Markdown file, in order."""
    blocks: list[tuple[int, str, set[str]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            pending = {word.strip() for word in marker.group(1).split(",") if word.strip()}
            unknown = pending - REQUIRES
            if unknown:
                raise ValueError(
                    f"{path}:{i + 1}: unknown requirement {sorted(unknown)}; use {sorted(REQUIRES)}"
                )
        elif fence:
            ticks, lang = fence.group(1), fence.group(2).lower()
            end = i + 1
            while end < len(lines) and lines[end].strip() != ticks:
                end += 1
            if lang in ("python", "py"):
                blocks.append((i + 2, "\n".join(lines[i + 1 : end]), pending))
            pending = set()
            i = end
        elif line:
            pending = set()
        i += 1
    return blocks


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]
MARKED = [
    (page, line, requires)
    for page in PAGES_WITH_CODE
    for line, _, requires in python_blocks(page)
    if requires
]


def where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def test_every_page_has_been_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "index.md", "distillation.md", "lora.md", "training.md"} <= names
    assert {page.name for page in PAGES_WITH_CODE} >= {
        "README.md",
        "distillation.md",
        "lora.md",
        "training.md",
    }


@pytest.fixture
def registries() -> Iterator[None]:
    """Put back every module-level dict of hf_enhance (the preset, scaling and layout registries) after a page."""
    saved = [
        (value, dict(value))
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "hf_enhance"
        for key, value in list(vars(module).items())
        if type(value) is dict and not key.startswith("__")
    ]
    yield
    for value, copy in saved:
        value.clear()
        value.update(copy)


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registries: None
) -> None:
    """The page's unmarked blocks, in order, in one namespace; the marked ones are reported by the next test."""
    blocks = python_blocks(page)
    monkeypatch.chdir(tmp_path)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_ENHANCE_CACHE", str(tmp_path / "hf_enhance_cache"))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code, requires in blocks:
        if requires:
            continue
        try:
            exec(compile(code, where(page, line), "exec"), namespace)
        except Exception as error:
            message = f"the python block at {where(page, line)} failed: {type(error).__name__}: {error}"
            raise AssertionError(message) from error


@pytest.mark.parametrize(
    ("page", "line", "requires"), MARKED, ids=[f"{where(p, n)}" for p, n, _ in MARKED] or None
)
def test_marked_block(page: Path, line: int, requires: set[str]) -> None:
    """Blocks marked `<!-- requires: gpu -->` / `<!-- requires: hub -->` are not run by the suite: say so."""
    pytest.skip(
        f"the python block at {where(page, line)} requires {', '.join(sorted(requires))}: not run on CI"
    )


def test_requires_markers_are_only_on_python_blocks() -> None:
    """A marker must sit right before a ```python block, or it skips nothing and misleads the reader."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if MARKER.match(line.strip()):
                following = next((x.strip() for x in lines[i + 1 :] if x.strip()), "")
                assert following.startswith("```python"), (
                    f"{page.name}:{i + 1}: marker not before a python block"
                )


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip(
        "mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' to build the docs"
    )
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
