"""Parameter-count benchmark: what each fine-tuning choice trains and costs, over the model zoo.

Every count is ``hf_enhance.count_parameters`` (PEFT applied to a meta-device skeleton: no weights, no hub).
Writes benchmarks/results/param_counts.json, param_counts.md and param_counts_fraction.png.

    python benchmarks/param_counts.py
    python benchmarks/param_counts.py --models gpt2 llama-2-70b --ranks 8 16 --repeats 3
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import matplotlib
import matplotlib.pyplot as plt
import peft
import torch
import transformers
from tqdm import tqdm
from transformers import HfArgumentParser

from hf_enhance import count_parameters
from hf_enhance.lora import list_lora_presets
from hf_enhance.params import MODEL_ZOO, ParameterCount
from hf_enhance.params.report import format_bytes, markdown_table, percent
from hf_enhance.params.zoo import worked_example

ROOT = Path(__file__).resolve().parent


@dataclass
class BenchmarkArguments:
    models: list[str] = field(default_factory=lambda: list(MODEL_ZOO), metadata={"help": "Zoo model names."})
    presets: list[str] = field(
        default_factory=lambda: list(list_lora_presets()), metadata={"help": "LoRA presets."}
    )
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 64], metadata={"help": "LoRA ranks."})
    repeats: int = field(default=5, metadata={"help": "Timed runs per timed count, after one warm-up run."})
    output_dir: str = field(default=str(ROOT / "results"), metadata={"help": "Where the results go."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODEL_ZOO))
        if unknown:
            raise ValueError(f"Unknown models {unknown}; valid: {list(MODEL_ZOO)}.")
        bad = sorted(set(self.presets) - set(list_lora_presets()))
        if bad:
            raise ValueError(f"Unknown presets {bad}; valid: {list(list_lora_presets())}.")
        if self.repeats < 1 or any(r < 1 for r in self.ranks):
            raise ValueError("repeats and ranks must be positive.")


# Whole-method comparison per model: (label, count_parameters keyword arguments).
METHOD_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("full fine-tuning", {"method": "full"}),
    ("LoRA all-linear r=16", {"preset": "all-linear", "r": 16}),
    ("LoRA attention-qv r=8", {"preset": "attention-qv", "r": 8}),
    ("IA3 (PEFT default targets)", {"method": "ia3"}),
    ("prefix tuning, 20 tokens", {"method": "prefix", "num_virtual_tokens": 20}),
]


def summary(count: ParameterCount) -> dict[str, Any]:
    return {
        "total": count.total,
        "trainable": count.trainable,
        "trainable_fraction": count.trainable_fraction,
        "memory_total_bytes": {setup: count.memory(setup).total for setup in count.memory_setups},
    }


def timed(fn: Callable[[], ParameterCount], repeats: int) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` timed calls (nanoGPT bench.py style): wall and process CPU time."""
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "warmup_s": warmup,
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "median_cpu_s": statistics.median(cpu),
        "runs_s": wall,
        "runs_cpu_s": cpu,
    }


def seed_rows() -> list[dict[str, Any]]:
    worked = count_parameters(worked_example(), target_modules=["layer"], r=2)
    gpt2_medium = count_parameters("gpt2-medium", target_modules=["c_proj"], r=4)
    return [
        {"setting": "seeds' worked example: 1000x6000 layer, LoRA r=2", **summary(worked)},
        {
            "setting": "gpt2-medium, LoRA target_modules=['c_proj'] (attention and MLP output), r=4",
            **summary(gpt2_medium),
        },
    ]


def lora_grid(args: BenchmarkArguments) -> list[dict[str, Any]]:
    rows = []
    grid = [(m, p, r) for m in args.models for p in args.presets for r in args.ranks]
    for model, preset, r in tqdm(grid, desc="LoRA grid"):
        rows.append(
            {"model": model, "preset": preset, "r": r, **summary(count_parameters(model, preset=preset, r=r))}
        )
    return rows


def method_rows(args: BenchmarkArguments) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    counts, timings = [], []
    for model in tqdm(args.models, desc="methods + timing"):
        for label, kwargs in METHOD_SETTINGS:
            timing = timed(lambda: count_parameters(model, **kwargs), args.repeats)  # noqa: B023
            count = count_parameters(model, **kwargs)
            counts.append({"model": model, "setting": label, **summary(count)})
            timings.append({"model": model, "setting": label, **timing})
    return counts, timings


def short(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def markdown(report: dict[str, Any], args: BenchmarkArguments) -> str:
    seeds = markdown_table(
        ["setting", "trainable", "total", "trainable %"],
        [
            [r["setting"], f"{r['trainable']:,}", f"{r['total']:,}", percent(r["trainable_fraction"])]
            for r in report["seeds"]
        ],
    )
    by_key = {(r["model"], r["preset"], r["r"]): r for r in report["lora"]}
    grid = markdown_table(
        ["model", "preset", *(f"r={r}" for r in args.ranks)],
        [
            [
                model,
                preset,
                *(
                    f"{short(by_key[model, preset, r]['trainable'])} ({percent(by_key[model, preset, r]['trainable_fraction'])})"
                    for r in args.ranks
                ),
            ]
            for model in args.models
            for preset in args.presets
        ],
    )
    methods = markdown_table(
        ["model", "setting", "trainable", "trainable %", "fp32", "bf16", "qlora"],
        [
            [
                r["model"],
                r["setting"],
                f"{r['trainable']:,}",
                percent(r["trainable_fraction"]),
                *(
                    format_bytes(r["memory_total_bytes"][s]) if s in r["memory_total_bytes"] else "n/a"
                    for s in ("fp32", "bf16", "qlora")
                ),
            ]
            for r in report["methods"]
        ],
    )
    timing = markdown_table(
        ["model", "setting", "median wall s", "min wall s", "median CPU s", "warm-up s"],
        [
            [
                r["model"],
                r["setting"],
                f"{r['median_s']:.3f}",
                f"{r['min_s']:.3f}",
                f"{r['median_cpu_s']:.3f}",
                f"{r['warmup_s']:.3f}",
            ]
            for r in report["timing"]
        ],
    )
    env = report["environment"]
    return (
        "\n\n".join(
            [
                "# Parameter counts: what each fine-tuning choice trains and costs",
                f"Command: `{report['command']}`  \n"
                f"Every number is `hf_enhance.count_parameters`: PEFT's own `get_nb_trainable_parameters()` on a "
                f"meta-device skeleton built from published config values (no weights, no hub). "
                f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
                f"accelerate {env['accelerate']}; {env['cpu_count']} CPUs, load average {env['loadavg_start']} at the "
                "start and {} at the end (a shared machine: timings vary with load).".format(
                    env["loadavg_end"]
                ),
                "## The seeds' examples",
                seeds,
                "## LoRA: trainable parameters (and % of all parameters) by preset and rank",
                grid,
                "## Methods compared: trainable parameters and training memory "
                "(weights + gradients + AdamW states; activations not included)",
                "fp32: everything float32. bf16: model loaded in bfloat16 (PEFT adapters stay float32). "
                "qlora: bf16 with the frozen linear weights in 4-bit NF4 (double quantization); "
                "not applicable to full fine-tuning.",
                methods,
                f"## Time per count (one warm-up, then {args.repeats} timed runs)",
                timing,
            ]
        )
        + "\n"
    )


def plot(report: dict[str, Any], args: BenchmarkArguments, path: Path) -> None:
    matplotlib.use("Agg")
    presets = [p for p in ("attention-qv", "all-linear") if p in args.presets] or args.presets[:1]
    fig, axes = plt.subplots(1, len(presets), figsize=(7 * len(presets), 5.5), sharey=True, squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        colors = plt.get_cmap("tab20").colors
        for i, model in enumerate(args.models):
            rows = sorted(
                (r for r in report["lora"] if r["model"] == model and r["preset"] == preset),
                key=lambda r: r["r"],
            )
            ax.plot(
                [r["r"] for r in rows],
                [100 * r["trainable_fraction"] for r in rows],
                marker="o",
                ms=3,
                label=model,
                color=colors[i % len(colors)],
            )
        ax.set(xscale="log", yscale="log", xlabel="LoRA rank r", title=f"preset {preset}")
        ax.set_xticks(args.ranks, [str(r) for r in args.ranks])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("trainable parameters (% of total)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("LoRA trainable fraction against rank (hf_enhance.count_parameters)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    report: dict[str, Any] = {"command": shlex.join(["python", "benchmarks/param_counts.py", *sys.argv[1:]])}
    report["seeds"] = seed_rows()
    report["lora"] = lora_grid(args)
    report["methods"], report["timing"] = method_rows(args)
    report["environment"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    (out / "param_counts.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "param_counts.md").write_text(markdown(report, args))
    plot(report, args, out / "param_counts_fraction.png")
    print(
        f"wrote {out / 'param_counts.json'}, {out / 'param_counts.md'}, {out / 'param_counts_fraction.png'}"
    )


if __name__ == "__main__":
    main()
