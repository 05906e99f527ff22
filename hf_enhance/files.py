"""Crash-safe writes: every file hf_enhance writes appears whole or not at all.

The data goes to a temporary file in the same folder, is flushed to disk, and is renamed over the target
(`os.replace`, atomic on POSIX and Windows). A kill during the write leaves the previous file, or none, plus a
stray ``*.tmp`` that the next write replaces; never a truncated file under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["atomic_path", "save_file_atomically", "write_json_atomically", "write_text_atomically"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block finishes, it is synced and renamed to `path`.

    On an exception inside the block the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _write(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> None:
    with atomic_path(path) as temporary:
        writer(temporary)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """`Path(path).write_text(text)` (UTF-8), crash-safe."""
    _write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> None:
    """`json.dump(data)` to `path`, crash-safe."""
    write_text_atomically(path, json.dumps(data, indent=indent) + "\n")


def save_file_atomically(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_file`, crash-safe."""
    _write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
