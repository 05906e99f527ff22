"""Naive vs fused distillation objective on CPU: peak memory, time and error of one forward + backward.

    python benchmarks/kd_loss_memory.py

naive = materialise ``hidden @ W.T`` for student and teacher, then `distillation_loss` and autograd;
fused = `fused_distillation_loss` on the hidden states and head weights (chunked over tokens).

Memory: each (size, method) runs in a fresh Python subprocess. Peak memory is the process's resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) during one forward + backward, minus the
resident size just before it. The inputs and weights are excluded; everything the objective allocates (logits,
temporaries, the gradients it returns) is included. In that subprocess glibc's mmap threshold is pinned at 64 KiB,
so every tensor larger than that is mapped on allocation and unmapped on free: the high-water mark then follows
the live tensors, not the allocator's caching policy (which otherwise keeps freed blocks under 32 MiB resident).
Only a tiny warm-up call runs before the measured one. torch.profiler and tracemalloc are not used: tracemalloc
does not see torch's allocations, and the profiler's per-op accounting misses allocator overheads.
Time: one subprocess per size runs a tiny warm-up per method, then ``repeats`` rounds at full size with the
methods interleaved (so the load of a shared machine falls on all of them alike); the best round is reported
(the first one doubles as the full-size warm-up: first touches of fresh memory make it slower).
Errors are relative to naive: |Δloss| / |loss| and max |Δgrad| / max |grad| for the student hidden states and
head weight.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from hf_enhance import distillation_loss, fused_distillation_loss
from hf_enhance.distillation.fused import DEFAULT_CHUNK_SIZE

COMMAND = "python benchmarks/kd_loss_memory.py"


@dataclass
class BenchmarkArguments:
    sizes: list[str] = field(
        default_factory=lambda: ["512x8192", "2048x8192", "512x49152", "2048x49152"],
        metadata={"help": "Token count x vocabulary size pairs (N x V) to compare naive and fused on."},
    )
    hidden_size: int = field(default=576, metadata={"help": "Hidden size H of student and teacher heads."})
    chunk_sizes: list[int] = field(
        default_factory=lambda: [64, 128, 256, 512],
        metadata={"help": "Chunk sizes swept at the largest N x V (the others use the default chunk size)."},
    )
    kind: str = field(default="forward_kl", metadata={"help": "Divergence: forward_kl, reverse_kl or jsd."})
    repeats: int = field(
        default=2, metadata={"help": "Timed rounds (forward + backward per method) after the warm-up."}
    )
    output: str = field(
        default="benchmarks/results/kd_loss_memory",
        metadata={"help": "Results path without suffix: writes .json and .md."},
    )
    worker: str | None = field(default=None, metadata={"help": "Internal: one measurement, as JSON."})


def make_inputs(n: int, v: int, h: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=generator)
    labels[torch.rand(n, generator=generator) < 0.1] = -100
    return {
        "student_hidden": torch.randn(n, h, generator=generator).requires_grad_(),
        "student_head_weight": (torch.randn(v, h, generator=generator) * 2 / h**0.5).requires_grad_(),
        "teacher_hidden": torch.randn(n, h, generator=generator),
        "teacher_head_weight": torch.randn(v, h, generator=generator) * 3 / h**0.5,
        "labels": labels,
    }


def step(method: str, inputs: dict[str, torch.Tensor], kind: str, chunk_size: int) -> torch.Tensor:
    """One forward + backward; returns the loss."""
    settings = {"alpha": 0.5, "temperature": 2.0, "kind": kind}
    if method == "naive":
        out = distillation_loss(
            inputs["student_hidden"] @ inputs["student_head_weight"].T,
            inputs["teacher_hidden"] @ inputs["teacher_head_weight"].T,
            inputs["labels"],
            **settings,
        )
    else:
        out = fused_distillation_loss(**inputs, chunk_size=chunk_size, **settings)
    out.loss.backward()
    return out.loss.detach()


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _warm_up(methods: list[tuple[str, int]], kind: str) -> None:
    """Load kernels and thread pools at a tiny size, outside any measurement."""
    tiny = make_inputs(64, 1024, 32)
    for method, _ in methods:
        step(method, tiny, kind, 16)


def memory_worker(config: dict) -> dict:
    """Peak memory of one forward + backward in this fresh process; saves loss and gradients for the errors."""
    _warm_up([(config["method"], 0)], config["kind"])
    inputs = make_inputs(config["n"], config["v"], config["h"])
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand free heap pages back, so reuse cannot hide a peak
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    loss = step(config["method"], inputs, config["kind"], config["chunk_size"])
    peak = _status_kib("VmHWM")
    grads = {"grad_hidden": inputs["student_hidden"].grad, "grad_weight": inputs["student_head_weight"].grad}
    torch.save({"loss": loss, **grads}, config["save"])
    return {"peak_mib": (peak - before) / 1024}


def time_worker(config: dict) -> dict:
    """Best-of-`repeats` time per method, the methods interleaved round by round so load hits all alike."""
    methods = [tuple(m) for m in config["methods"]]
    _warm_up(methods, config["kind"])
    inputs = make_inputs(config["n"], config["v"], config["h"])
    times: dict[str, list[float]] = {f"{m}:{c}": [] for m, c in methods}
    for _ in range(config["repeats"]):
        for method, chunk in methods:
            inputs["student_hidden"].grad = inputs["student_head_weight"].grad = None
            start = time.perf_counter()
            step(method, inputs, config["kind"], chunk)
            times[f"{method}:{chunk}"].append(time.perf_counter() - start)
    return times


def in_subprocess(config: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if config["job"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def relative_errors(naive_path: str, fused_path: str) -> dict[str, float]:
    naive, fused = torch.load(naive_path), torch.load(fused_path)
    errors = {"loss": ((fused["loss"] - naive["loss"]).abs() / naive["loss"].abs()).item()}
    for name in ("grad_hidden", "grad_weight"):
        errors[name] = ((fused[name] - naive[name]).abs().max() / naive[name].abs().max()).item()
    return errors


def run(args: BenchmarkArguments) -> list[dict]:
    pairs = [tuple(int(x) for x in size.split("x")) for size in args.sizes]
    largest = max(pairs, key=lambda p: p[0] * p[1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, v in pairs:
            base = {"n": n, "v": v, "h": args.hidden_size, "kind": args.kind}
            chunks = args.chunk_sizes if (n, v) == largest else [DEFAULT_CHUNK_SIZE]
            methods = [("naive", 0)] + [("fused", chunk) for chunk in chunks]
            times = in_subprocess({**base, "job": "time", "methods": methods, "repeats": args.repeats})
            naive = None
            for method, chunk in methods:
                path = f"{tmp}/{method}.pt"
                memory = in_subprocess(
                    {**base, "job": "memory", "method": method, "chunk_size": chunk, "save": path}
                )
                row = {
                    **base,
                    "method": method,
                    "chunk_size": chunk or None,
                    "peak_mib": memory["peak_mib"],
                    "times_s": times[f"{method}:{chunk}"],
                    "time_s": min(times[f"{method}:{chunk}"]),
                }
                if naive is None:
                    naive = row
                else:
                    row["memory_ratio"] = row["peak_mib"] / naive["peak_mib"]
                    row["time_ratio"] = row["time_s"] / naive["time_s"]
                    row["error"] = relative_errors(f"{tmp}/naive.pt", path)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def write_results(args: BenchmarkArguments, rows: list[dict], seconds: float) -> None:
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "wall_s": round(seconds, 1),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(args).items() if k != "worker"}
    payload = {"command": COMMAND, "settings": settings, "environment": environment, "results": rows}
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Fused vs naive distillation objective (forward + backward, CPU)",
        "",
        f"Reproduce: `{COMMAND}` (about {seconds / 60:.0f} min here).",
        "",
        f"H = {args.hidden_size}, kind = {args.kind}, alpha = 0.5, T = 2, 10% of positions masked, float32. "
        f"torch {environment['torch']}, {environment['threads']} threads on a shared {environment['cpu_count']}-core "
        "CPU. Peak = resident-set high-water mark during one forward + backward minus the resident size before it "
        "(inputs and weights excluded), each (size, method) in a fresh subprocess with glibc's mmap threshold pinned "
        "at 64 KiB (so resident memory follows the live tensors) after a tiny warm-up. "
        f"Time = best of {args.repeats} rounds at full size, methods interleaved in one process, after a tiny "
        "warm-up (the first round doubles as the full-size warm-up). "
        "Errors relative to naive (|Δloss|/|loss|, max|Δgrad|/max|grad|).",
        "",
        "| N | V | method | chunk | [N,V] fp32 MiB | peak MiB | memory ratio | time s | time ratio "
        "| loss err | grad h err | grad W err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        error = row.get("error", {})
        lines.append(
            "| {n} | {v} | {method} | {chunk} | {logits:.0f} | {peak:.0f} | {mem} | {time:.2f} | {tr} | {le} | {gh} "
            "| {gw} |".format(
                n=row["n"],
                v=row["v"],
                method=row["method"],
                chunk=row["chunk_size"] or "-",
                logits=row["n"] * row["v"] * 4 / 2**20,
                peak=row["peak_mib"],
                mem=f"{row['memory_ratio']:.3f}" if "memory_ratio" in row else "1",
                time=row["time_s"],
                tr=f"{row['time_ratio']:.2f}" if "time_ratio" in row else "1",
                le=f"{error['loss']:.1e}" if error else "-",
                gh=f"{error['grad_hidden']:.1e}" if error else "-",
                gw=f"{error['grad_weight']:.1e}" if error else "-",
            )
        )
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.worker is not None:
        config = json.loads(args.worker)
        worker = memory_worker if config["job"] == "memory" else time_worker
        print(json.dumps(worker(config)))
        return
    start = time.perf_counter()
    rows = run(args)
    write_results(args, rows, time.perf_counter() - start)


if __name__ == "__main__":
    main()
