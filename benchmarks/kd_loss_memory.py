"""Naive vs fused distillation objective: peak memory, time and error of one forward + backward.

    python benchmarks/kd_loss_memory.py                                     # CPU, float32
    python benchmarks/kd_loss_memory.py --device cuda --dtype bfloat16 --hidden_size 4096 \
        --sizes 4096x128256 16384x128256 --sweep 16384x128256 --chunk_sizes 64 128 256 512 1024 2048 4096 \
        --repeats 3 --output benchmarks/results/kd_loss_memory_gpu   # one GPU

naive = materialise ``hidden @ W.T`` for student and teacher, then `distillation_loss` and autograd;
fused = `fused_distillation_loss` on the hidden states and head weights (chunked over tokens).

Memory: each (size, method) runs in a fresh Python process with glibc's mmap threshold pinned at 64 KiB
(`_measure.in_subprocess`), so resident memory follows the live tensors rather than the allocator's cache. Peak
memory is the resident-set high-water mark during one forward + backward minus the resident size just before it
(`_measure.PeakMemory`): the inputs and weights are excluded; everything the objective allocates (logits,
temporaries, the gradients it returns) is included. Only a tiny warm-up call runs before the measured one.
Time: one fresh process per size runs a tiny warm-up per method, then ``repeats`` rounds at full size with the
methods interleaved (so the load of a shared machine falls on all of them alike); the best round is reported for
wall-clock and for process CPU time (the first round doubles as the full-size warm-up: first touches of fresh
memory make it slower).
Errors are relative to naive: |Δloss| / |loss| and max |Δgrad| / max |grad| for the student hidden states and
head weight.

With ``--device cuda`` everything runs in this process: peak memory is the CUDA allocator's high-water mark
during the forward + backward minus what was allocated before it (`_measure.CudaPeakMemory`), and each timed
step ends with a device synchronisation.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _measure import CudaPeakMemory, PeakMemory, environment, in_subprocess
from transformers import HfArgumentParser

from hf_enhance import distillation_loss, fused_distillation_loss
from hf_enhance.objectives.fused import default_chunk_size


@dataclass
class BenchmarkArguments:
    sizes: list[str] = field(
        default_factory=lambda: ["512x8192", "2048x8192", "512x49152", "2048x49152"],
        metadata={"help": "Token count x vocabulary size pairs (N x V) to compare naive and fused on."},
    )
    hidden_size: int = field(default=576, metadata={"help": "Hidden size H of student and teacher heads."})
    chunk_sizes: list[int] = field(
        default_factory=lambda: [32, 64, 128, 256, 512, 1024],
        metadata={
            "help": "Chunk sizes swept at the `sweep` sizes (the other sizes use the default chunk size)."
        },
    )
    sweep: list[str] = field(
        default_factory=lambda: ["2048x8192", "2048x49152"],
        metadata={"help": "Sizes (N x V) at which every chunk size is measured."},
    )
    kind: str = field(default="forward_kl", metadata={"help": "Divergence: forward_kl, reverse_kl or jsd."})
    repeats: int = field(
        default=2, metadata={"help": "Timed rounds (forward + backward per method) after the warm-up."}
    )
    output: str = field(
        default="benchmarks/results/kd_loss_memory",
        metadata={"help": "Results path without suffix: writes .json and .md."},
    )
    device: str = field(default="cpu", metadata={"help": "cpu, or cuda (one GPU, measured in this process)."})
    dtype: str = field(
        default="float32", metadata={"help": "Hidden states and head weights: float32 or bfloat16."}
    )
    worker: str | None = field(default=None, metadata={"help": "Internal: one measurement job, as JSON."})


def make_inputs(
    n: int, v: int, h: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, torch.Tensor]:
    random = {"generator": torch.Generator(device).manual_seed(0), "device": device}
    labels = torch.randint(0, v, (n,), **random)
    labels[torch.rand(n, **random) < 0.1] = -100
    floats = {
        "student_hidden": torch.randn(n, h, **random),
        "student_head_weight": torch.randn(v, h, **random) * 2 / h**0.5,
        "teacher_hidden": torch.randn(n, h, **random),
        "teacher_head_weight": torch.randn(v, h, **random) * 3 / h**0.5,
    }
    inputs = {name: t.to(getattr(torch, dtype)) for name, t in floats.items()}
    for name in ("student_hidden", "student_head_weight"):
        inputs[name].requires_grad_()
    return {**inputs, "labels": labels}


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
    if out.loss.is_cuda:
        torch.cuda.synchronize(out.loss.device)
    return out.loss.detach()


def _warm_up(methods: list[tuple[str, int]], config: dict[str, Any]) -> None:
    """Load kernels and thread pools at a tiny size, outside any measurement."""
    tiny = make_inputs(64, 1024, 32, config["device"], config["dtype"])
    for method, _ in methods:
        step(method, tiny, config["kind"], 16)


def memory_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one forward + backward in this fresh process; errors against the saved naive result."""
    _warm_up([(config["method"], 0)], config)
    inputs = make_inputs(config["n"], config["v"], config["h"], config["device"], config["dtype"])
    cuda = config["device"] != "cpu"
    with CudaPeakMemory(torch.device(config["device"])) if cuda else PeakMemory() as peak:
        loss = step(config["method"], inputs, config["kind"], config["chunk_size"])
    result = {"loss": loss, "grad_hidden": inputs["student_hidden"].grad}
    result["grad_weight"] = inputs["student_head_weight"].grad
    if config["method"] == "naive":
        torch.save(result, config["naive_path"])
        return {"peak_mib": peak.mib}
    naive = torch.load(config["naive_path"])
    errors = {"loss": ((loss - naive["loss"]).abs() / naive["loss"].abs()).item()}
    for name in ("grad_hidden", "grad_weight"):
        errors[name] = ((result[name] - naive[name]).abs().max() / naive[name].abs().max()).item()
    return {"peak_mib": peak.mib, "error": errors}


def time_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Best-of-`repeats` time per method, the methods interleaved round by round so load hits all alike."""
    methods = config["methods"]
    _warm_up(methods, config)
    inputs = make_inputs(config["n"], config["v"], config["h"], config["device"], config["dtype"])
    times: dict[str, dict[str, list[float]]] = {f"{m}:{c}": {"wall": [], "cpu": []} for m, c in methods}
    for _ in range(config["repeats"]):
        for method, chunk in methods:
            inputs["student_hidden"].grad = inputs["student_head_weight"].grad = None
            wall, cpu = time.perf_counter(), time.process_time()
            step(method, inputs, config["kind"], chunk)
            times[f"{method}:{chunk}"]["wall"].append(time.perf_counter() - wall)
            times[f"{method}:{chunk}"]["cpu"].append(time.process_time() - cpu)
    return times


WORKERS = {"memory": memory_worker, "time": time_worker}


def measure(job: str, config: dict[str, Any]) -> dict[str, Any]:
    """One job in a fresh process (memory jobs with glibc's mmap threshold pinned: see `_measure`); on a GPU, in
    this process."""
    if config["device"] != "cpu":
        result = WORKERS[job](config)
        torch.cuda.empty_cache()
        return result
    return in_subprocess(__file__, {**config, "job": job}, pin_mmap=job == "memory")


def run(args: BenchmarkArguments) -> list[dict]:
    pairs = [tuple(int(x) for x in size.split("x")) for size in args.sizes]
    sweep = {tuple(int(x) for x in size.split("x")) for size in args.sweep}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, v in pairs:
            base = {"n": n, "v": v, "h": args.hidden_size, "kind": args.kind}
            base.update(device=args.device, dtype=args.dtype)
            chunks = args.chunk_sizes if (n, v) in sweep else [default_chunk_size(v, args.device)]
            methods = [("naive", 0)] + [("fused", chunk) for chunk in chunks]
            times = measure("time", {**base, "methods": methods, "repeats": args.repeats})
            naive = None
            for method, chunk in methods:
                memory = measure(
                    "memory",
                    {**base, "method": method, "chunk_size": chunk, "naive_path": f"{tmp}/naive.pt"},
                )
                row = {
                    **base,
                    "method": method,
                    "chunk_size": chunk or None,
                    "peak_mib": memory["peak_mib"],
                    "wall_times_s": times[f"{method}:{chunk}"]["wall"],
                    "cpu_times_s": times[f"{method}:{chunk}"]["cpu"],
                    "time_s": min(times[f"{method}:{chunk}"]["wall"]),
                    "cpu_s": min(times[f"{method}:{chunk}"]["cpu"]),
                }
                if naive is None:
                    naive = row
                else:
                    row["memory_ratio"] = row["peak_mib"] / naive["peak_mib"]
                    row["time_ratio"] = row["time_s"] / naive["time_s"]
                    row["cpu_ratio"] = row["cpu_s"] / naive["cpu_s"]
                    row["error"] = memory["error"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _method_note(args: BenchmarkArguments, machine: dict[str, Any]) -> str:
    """How the table was measured, for its header."""
    common = (
        f"H = {args.hidden_size}, kind = {args.kind}, alpha = 0.5, T = 2, 10% of positions masked, {args.dtype}. "
        f"torch {machine['torch']}"
    )
    errors = (
        "Errors relative to naive (|Δloss|/|loss|, max|Δgrad|/max|grad|). Default chunk size (marked *): "
        "`default_chunk_size(V, device)`: on CPU 1024 at V = 8192, 128 at V = 49152, 64 at V = 128256; on CUDA "
        "1024 up to V = 131072."
    )
    if args.device != "cpu":
        return (
            f"{common}, one {machine['gpu']}. Peak = CUDA allocator high-water mark during one forward + backward "
            "minus what was allocated before it (inputs and weights excluded), after a tiny warm-up. Time = best of "
            f"{args.repeats} rounds at full size, methods interleaved, each step ending with a device "
            f"synchronisation (CPU time is not meaningful here). {errors}"
        )
    return (
        f"{common}, {machine['threads']} threads on a shared {machine['cpu_count']}-core CPU "
        f"({machine['processor']}). Peak = resident-set high-water mark during one forward + backward minus the "
        "resident size before it (inputs and weights excluded), each (size, method) in a fresh process with glibc's "
        "mmap threshold pinned at 64 KiB (so resident memory follows the live tensors) after a tiny warm-up. Wall "
        f"and CPU (process) time = best of {args.repeats} rounds at full size, methods interleaved in one process, "
        "after a tiny warm-up (the first round doubles as the full-size warm-up); the CPU time is the steadier of "
        f"the two on a machine shared with other jobs. {errors}"
    )


def write_results(args: BenchmarkArguments, rows: list[dict], seconds: float, load_start: float) -> None:
    machine = environment(seconds)
    machine["load_average_1m"] = [load_start, machine["load_average_1m"]]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(args).items() if k != "worker"}
    command = " ".join(["python", *sys.argv])
    if args.device != "cpu":
        machine["gpu"] = torch.cuda.get_device_name(args.device)
    payload = {"command": command, "settings": settings, "environment": machine, "results": rows}
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# Fused vs naive distillation objective (forward + backward, {machine.get('gpu', 'CPU')})",
        "",
        f"Reproduce: `{command}` (took {seconds / 60:.1f} min here; 1-minute load average "
        "{:.1f} at the start and {:.1f} at the end, on {} cores shared with other jobs).".format(
            *machine["load_average_1m"], machine["cpu_count"]
        ),
        "",
        _method_note(args, machine),
        "",
        "| N | V | method | chunk | peak MiB | memory ratio | wall s | wall ratio | CPU s | CPU ratio "
        "| loss err | grad h err | grad W err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        error = row.get("error")
        chunk = row["chunk_size"]
        cells = [
            row["n"],
            row["v"],
            row["method"],
            "-"
            if chunk is None
            else f"{chunk}{'*' if chunk == default_chunk_size(row['v'], row['device']) else ''}",
            f"{row['peak_mib']:.0f}",
            f"{row.get('memory_ratio', 1):.3f}",
            f"{row['time_s']:.2f}",
            f"{row.get('time_ratio', 1):.2f}",
            f"{row['cpu_s']:.2f}",
            f"{row.get('cpu_ratio', 1):.2f}",
            *(f"{error[k]:.1e}" if error else "-" for k in ("loss", "grad_hidden", "grad_weight")),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.worker is not None:
        config = json.loads(args.worker)
        print(json.dumps(WORKERS[config["job"]](config)))
        return
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    rows = run(args)
    write_results(args, rows, time.perf_counter() - start, load_start)


if __name__ == "__main__":
    main()
