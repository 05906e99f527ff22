"""Shared measurement helpers for the CPU benchmarks: peak resident memory, fresh worker processes, the machine.

Peak memory is the process's resident-set high-water mark (``VmHWM``) reset through ``/proc/self/clear_refs``
just before the measured code, minus the resident size (``VmRSS``) at that moment. Run it in a fresh process
started by `in_subprocess(..., pin_mmap=True)`: glibc's mmap threshold is then pinned at 64 KiB, so every tensor
larger than that is mapped on allocation and unmapped on free, and the high-water mark follows the live tensors
rather than the allocator's caching policy. tracemalloc does not see torch's allocations and the profiler's
per-op accounting misses allocator overheads, so neither is used.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

MMAP_THRESHOLD_BYTES = 64 * 1024


def status_kib(field_name: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS`` or ``VmHWM``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


class PeakMemory:
    """Extra resident memory at the peak between `start()` and `stop()`, in MiB (Linux only).

    `start()` frees what it can (garbage collection, glibc's free heap pages) so reuse cannot hide a peak, records
    the resident size and resets the high-water mark; `stop()` returns the high-water mark minus that size. Also
    usable as a context manager: the result is in `.mib` after the block.
    """

    def __init__(self) -> None:
        self._before_kib: int | None = None
        self.mib: float | None = None

    def start(self) -> None:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self._before_kib = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size

    def stop(self) -> float:
        if self._before_kib is None:
            raise RuntimeError("PeakMemory.stop() called before start().")
        self.mib = (status_kib("VmHWM") - self._before_kib) / 1024
        self._before_kib = None
        return self.mib

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CudaPeakMemory:
    """`PeakMemory` for a CUDA device: the allocator's high-water mark during the block minus what was allocated
    before it, in MiB (`.mib` after the block)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None

    def __enter__(self) -> CudaPeakMemory:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.mib = (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20


def in_subprocess(script: str, config: dict[str, Any], pin_mmap: bool = False) -> dict[str, Any]:
    """Run ``python script --worker <config as JSON>`` in a fresh process; return the JSON on its last stdout line.

    The worker must print its result as one JSON line last. ``pin_mmap`` pins glibc's mmap threshold (see the
    module docstring) for memory measurements. The hub is off (``HF_HUB_OFFLINE=1``).
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pin_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    result = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {config} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def environment(seconds: float | None = None) -> dict[str, Any]:
    """The software and machine a result was measured on (and the run's wall time, when given)."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if seconds is not None:
        info["wall_s"] = round(seconds, 1)
    return info


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None
