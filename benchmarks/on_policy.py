"""On-policy distillation measured for what it is for: from a healed student, on the student's own text and on a
task with exact answers; against TRL's on-policy trainers on cost.

    accelerate launch examples/distill_gpt2.py   # first: the main job writes the healed start (outputs/distill_gpt2)
    python benchmarks/on_policy.py                        # chat prompts, from the main job's student (~70 min, 2 CPUs)
    python benchmarks/on_policy.py --task sorting         # a task with exact answers (not yet run in full)
    python benchmarks/on_policy.py --rows lmbda_1 --seeds 0 --max_steps 5 --trl true   # cost against TRL
    python benchmarks/on_policy.py --tiny                 # tiny random models: a smoke test (< 1 min)

Every row continues the same healed student for the same steps with one optimizer and one learning-rate schedule,
with the same objective (reverse KL, T = 1, alpha = 1 by default: no label term, so only where the completions
come from differs) and the same generation settings (sampling at T = 1):

- ``off_policy``: the dataset's answers (lmbda = 0; for chat the teacher's cached answers, for the task the
  exact answers); ``seq_kd``: answers the teacher samples afresh at every step;
- ``lmbda_0.5``: half of the steps on the student's own samples (GKD's mix); ``lmbda_1``: every step;
- ``ramp``: lmbda rising linearly from 0 to 1 over the run (``lmbda_schedule="linear"``);
- ``trl_gkd_lmbda_1`` / ``trl_distillation`` (with ``--trl``): TRL's GKDTrainer (lmbda 1) and DistillationTrainer
  with the same models and settings (JSD, beta 0.5, as TRL has no reverse KL at T = 1 alone), for step time and
  peak memory.

Tasks:

- ``chat``: the teacher is SmolLM2-135M-Instruct; the start is the main job's distilled student (``--start``, its
  output folder: 20 of the teacher's 30 layers after 60 off-policy steps). Prompts are the main job's 64
  (`examples/prompts.txt`) through the chat template: the first 51 train (one cached teacher answer each), the last
  13 are held out and answered ``eval_samples`` times each.
- ``sorting``: sort five two-digit numbers (`_sorting.py`). The teacher is SmolLM2-135M-Instruct fine-tuned with
  LoRA on the task and merged (cached); the student is built from it (`student_from_teacher`, 20 layers, MLP width
  1000) and healed off-policy for ``heal_steps`` steps on exact answers; then the rows. Scored by exact match of
  greedy answers on ``test_problems`` held-out problems.

Quality (`grade_own_answers`, evaluated in float32): per token of the student's own samples (T = 1) on the held-out
prompts, KL(student ‖ teacher) over the full vocabulary (what on-policy distillation minimises), the student's
entropy and the teacher's NLL (in expectation their sum, so a sharper student lowers it without coming closer to
the teacher), and the answers' mean length. Each row is trained and evaluated with ``--seeds`` (training seed s,
evaluation seed 1000 + s, the same for every row of a seed), and summarised as mean and standard error over
seeds, with the change from the start paired by seed. Cost: the median step time after the first and the peak resident memory of step
``probe_step``. Writes ``<output>.json`` (with a ``goals`` object) and ``<output>.md``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _measure import MMAP_THRESHOLD_BYTES, PeakMemory, environment
from _sorting import exact_match, sorting_rows, sorting_teacher
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    set_seed,
)

from hf_enhance import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
    student_from_teacher,
)
from hf_enhance.distillation import grade_own_answers
from hf_enhance.distillation.sources.teacher_texts import generate_teacher_texts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from lm_utils import load_causal_lm, resolve_dtype  # noqa: E402

COMMAND = "python benchmarks/on_policy.py"
JSD_BETA = 0.5
# Each hf_enhance row's on-policy settings; "ramp" gets lmbda_steps = max_steps when it is built.
ROWS: dict[str, dict[str, Any]] = {
    "off_policy": {"lmbda": 0.0},
    "seq_kd": {"lmbda": 0.0, "seq_kd": True},
    "lmbda_0.5": {"lmbda": 0.5},
    "lmbda_1": {"lmbda": 1.0},
    "ramp": {"lmbda": 1.0, "lmbda_schedule": "linear"},
}
ON_POLICY_ROWS = ("lmbda_0.5", "lmbda_1", "ramp")
TRL_ROWS = ("trl_gkd_lmbda_1", "trl_distillation")
# (better, worse, metric): the paired differences the results report; lower reverse KL, higher exact match.
GAPS = (
    ("lmbda_1", "off_policy", "reverse_kl"),
    ("lmbda_0.5", "off_policy", "reverse_kl"),
    ("ramp", "off_policy", "reverse_kl"),
    ("seq_kd", "off_policy", "reverse_kl"),
    ("off_policy", "lmbda_1", "exact_match"),
    ("off_policy", "lmbda_0.5", "exact_match"),
    ("off_policy", "ramp", "exact_match"),
)
METRICS = (
    "reverse_kl",
    "entropy",
    "teacher_nll",
    "answer_length",
    "exact_match",
)


@dataclass
class BenchmarkArguments:
    task: str = field(
        default="chat",
        metadata={"help": "chat (the main job's student on chat prompts) or sorting (exact answers).",
                  "choices": ["chat", "sorting"]},
    )  # fmt: skip
    start: str = field(
        default="outputs/distill_gpt2",
        metadata={"help": "chat: the main job's output folder, whose distilled student is the healed start."},
    )
    seeds: str | None = field(
        default=None,
        metadata={"help": "Comma-separated seeds; every row runs once per seed (0,1,2; tiny 0,1)."},
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of every row after the start (chat 30, sorting 40)."}
    )
    batch_size: int | None = field(default=None, metadata={"help": "Prompts per step (chat 4, sorting 8)."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens per generated completion, every row (chat 48, sorting 24)."}
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak learning rate of the rows (AdamW, cosine decay over the row)."}
    )
    alpha: float = field(
        default=1.0,
        metadata={"help": "Weight of the divergence on off-policy steps (on-policy steps use 1): 1 gives every row "
                  "the same objective, so only where the completions come from differs."},
    )  # fmt: skip
    divergence: str = field(
        default="reverse_kl",
        metadata={"help": "The hf_enhance rows' divergence at T = 1: reverse_kl (the on-policy default), "
                  "forward_kl or jsd (beta 0.5).", "choices": ["reverse_kl", "forward_kl", "jsd"]},
    )  # fmt: skip
    held_out_prompts: int = field(
        default=13, metadata={"help": "chat: last prompts of prompts.txt held out."}
    )
    eval_samples: int = field(default=8, metadata={"help": "chat: student answers per held-out prompt."})
    test_problems: int = field(default=200, metadata={"help": "sorting: held-out problems scored."})
    teacher_steps: int = field(
        default=120,
        metadata={"help": "sorting: LoRA fine-tuning steps of the teacher (float32, 16 problems each)."},
    )
    heal_steps: int = field(default=80, metadata={"help": "Off-policy steps that heal a student built here."})
    heal_learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of the healing."})
    probe_step: int = field(default=3, metadata={"help": "The step whose peak memory is measured (0-based)."})
    trl: bool = field(
        default=False, metadata={"help": "Also train with TRL's GKDTrainer and DistillationTrainer."}
    )
    rows: str | None = field(
        default=None, metadata={"help": "Comma-separated hf_enhance rows to run (default: all of ROWS)."}
    )
    cache_dir: str = field(
        default="~/.cache/hf_enhance",
        metadata={"help": "Where teacher answers and the task's teacher are cached."},
    )
    tiny: bool = field(default=False, metadata={"help": "Tiny random models, a few steps: a smoke test."})
    output: str | None = field(
        default=None,
        metadata={"help": "Results path without suffix (.json and .md); default benchmarks/results/on_policy "
                  "(chat) or on_policy_sorting."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        chat = self.task == "chat"
        self.max_steps = self.max_steps or (30 if chat else 40)
        self.batch_size = self.batch_size or (4 if chat else 8)
        self.max_new_tokens = self.max_new_tokens or (48 if chat else 24)
        if self.tiny:
            self.max_steps, self.batch_size, self.max_new_tokens, self.probe_step = 3, 2, 6, 1
            self.held_out_prompts, self.eval_samples, self.test_problems = 2, 1, 4
            self.teacher_steps, self.heal_steps = 2, 2
        self.seeds = self.seeds or ("0,1" if self.tiny else "0,1,2")
        if self.output is None:
            self.output = "benchmarks/results/on_policy" + ("_sorting" if self.task == "sorting" else "")
        self.seed_list = [int(seed) for seed in self.seeds.split(",")]
        names = self.rows.split(",") if self.rows else list(ROWS)
        unknown = sorted(set(names) - set(ROWS))
        if unknown:
            raise ValueError(f"--rows names unknown rows {unknown}. Valid rows: {', '.join(ROWS)}.")
        self.row_names = [*names, *(TRL_ROWS if self.trl else ())]


def tiny_models(prompts: list[str]) -> tuple[PreTrainedModel, Any]:
    """A 4-layer random Llama over a byte-level BPE tokenizer trained on the prompts, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(prompts * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")  # fmt: skip
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def chat_rows(args: BenchmarkArguments, teacher: Any, tokenizer: Any, prompts: list[str]) -> Dataset:
    """Each prompt with one teacher answer, as chat messages (cached on disk like the main job's teacher text)."""
    texts = generate_teacher_texts(teacher, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                   temperature=0.8, top_p=0.95, seed=0, chat_template=True,
                                   show_progress=not args.tiny,
                                   cache_dir=None if args.tiny else args.cache_dir)  # fmt: skip
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
                for prompt, text in zip(texts["prompt"], texts["text"], strict=True)
            ]
        }
    )


class StepCost(TrainerCallback):
    """Wall time of every optimizer step and the peak resident memory of step ``probe_step`` (0-based).

    A step runs from the end of the previous one (the start of training for the first) to its own end, so it
    includes fetching its batch, which is where completions are generated (hf_enhance's `get_batch_samples`).
    """

    def __init__(self, probe_step: int) -> None:
        self.probe_step = probe_step
        self.seconds: list[float] = []
        self.peak = PeakMemory()
        self._mark = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.probe_step == 0:
            self.peak.start()
        self._mark = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._mark)
        if state.global_step == self.probe_step + 1:
            self.peak.stop()
        if state.global_step == self.probe_step:
            self.peak.start()
        self._mark = time.perf_counter()


def bf16_training(args: BenchmarkArguments) -> bool:
    """Training autocasts to bfloat16 where the CPU computes it natively; evaluation is always float32."""
    return not args.tiny and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def common_settings(
    args: BenchmarkArguments, folder: str, steps: int, seed: int, learning_rate: float
) -> dict[str, Any]:  # fmt: skip
    """TrainingArguments every row shares (hf_enhance and TRL alike)."""
    return {
        "output_dir": folder, "report_to": "none", "use_cpu": True, "max_steps": steps,
        "per_device_train_batch_size": args.batch_size, "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "logging_steps": max(1, steps // 4),
        "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "seed": seed,
        "bf16": bf16_training(args),
    }  # fmt: skip


def build_trainer(
    args: BenchmarkArguments, row: str, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    rows: Dataset, common: dict[str, Any],
) -> Trainer:  # fmt: skip
    """The trainer of one row."""
    if row == "trl_gkd_lmbda_1":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(**common, lmbda=1.0, beta=JSD_BETA, temperature=1.0, seq_kd=False,
                           max_new_tokens=args.max_new_tokens, disable_dropout=False)  # fmt: skip
        return GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=rows,
                          processing_class=tokenizer)  # fmt: skip
    if row == "trl_distillation":
        from trl import DistillationConfig
        from trl import DistillationTrainer as TRLDistillationTrainer

        config = DistillationConfig(**common, beta=JSD_BETA, temperature=1.0, top_p=1.0, top_k=0,
                                    max_completion_length=args.max_new_tokens, shuffle_dataset=False)  # fmt: skip
        prompts = rows.map(lambda row: {"prompt": row["messages"][:-1]}, remove_columns=["messages"])
        return TRLDistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=prompts,
                                      processing_class=tokenizer)  # fmt: skip
    settings = {**ROWS[row], "lmbda_steps": common["max_steps"]} if row == "ramp" else ROWS[row]
    training = DistillationTrainingArguments(
        **common, load_best_model_at_end=False, early_stopping_patience=None, alpha=args.alpha,
        temperature=1.0, distillation_loss=args.divergence, jsd_beta=JSD_BETA, max_new_tokens=args.max_new_tokens,
        generation_temperature=1.0, generation_top_p=1.0, generation_top_k=0, **settings,
    )  # fmt: skip
    return DistillationTrainer(model=student, teacher_model=teacher, args=training, train_dataset=rows,
                               processing_class=tokenizer)  # fmt: skip


def train_row(
    args: BenchmarkArguments, row: str, start: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    rows: Dataset, seed: int, steps: int, probe_step: int = -1, learning_rate: float | None = None,
) -> tuple[PreTrainedModel, dict[str, Any]]:  # fmt: skip
    """A copy of ``start`` trained as ``row`` says for ``steps`` steps: the float32 model (autocast taken off), its
    history, step times and the peak memory of step ``probe_step``."""
    set_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(args, row, copy.deepcopy(start), teacher, tokenizer, rows,
                                common_settings(args, folder, steps, seed, learning_rate or args.learning_rate))  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        cost = StepCost(probe_step)
        trainer.add_callback(cost)
        trainer.train()
    student = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).float().eval()
    return student, {
        "log_history": list(trainer.state.log_history),
        "train_s": round(sum(cost.seconds), 1),
        "median_step_s": statistics.median(cost.seconds[1:] or cost.seconds),
        "peak_mib": cost.peak.mib,
    }


def evaluate(
    args: BenchmarkArguments, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    held_out: Dataset, test: Dataset | None, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The student's samples graded by the teacher (per token) and, for the task, its exact-match rate."""
    rows = [row for row in held_out for _ in range(args.eval_samples)]
    graded = grade_own_answers(student, teacher, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                               temperature=1.0, top_p=1.0, batch_size=16, seed=1000 + seed)  # fmt: skip
    quality = {
        "reverse_kl": graded["reverse_kl_of_own_answers"],
        "entropy": graded["entropy_of_own_answers"],
        "teacher_nll": graded["teacher_nll_of_own_answers"],
        "answer_length": graded["answer_length"],
    }
    if test is not None:
        quality.update(exact_match(student, tokenizer, test))
    return quality


def mean_and_error(values: list[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation over sqrt(n); 0 for one value)."""
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "standard_error": spread}


def summarise(runs: list[dict[str, Any]], starts: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row: each metric's mean and standard error over seeds, and its change from the start paired by seed."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(run["row"] for run in runs):
        mine = [run for run in runs if run["row"] == name]
        summary[name] = {"seeds": len(mine)}
        for metric in METRICS:
            if metric in mine[0]:
                summary[name][metric] = mean_and_error([run[metric] for run in mine])
                summary[name][metric + "_change"] = mean_and_error(
                    [run[metric] - starts[run["seed"]][metric] for run in mine]
                )
        summary[name]["median_step_s"] = statistics.median(run["median_step_s"] for run in mine)
        peaks = [run["peak_mib"] for run in mine if run["peak_mib"] is not None]
        summary[name]["peak_mib"] = max(peaks) if peaks else None
    return summary


def paired_gap(runs: list[dict[str, Any]], better: str, worse: str, metric: str) -> dict[str, float] | None:
    """``worse``'s metric minus ``better``'s, per seed: mean, standard error and the mean in standard errors."""
    values = {(run["row"], run["seed"]): run[metric] for run in runs}
    seeds = sorted(seed for row, seed in values if row == better and (worse, seed) in values)
    if not seeds:
        return None
    gap = mean_and_error([values[worse, seed] - values[better, seed] for seed in seeds])
    error = gap["standard_error"]
    return {**gap, "seeds": len(seeds), "in_standard_errors": gap["mean"] / error if error else None}


def goals_of(
    args: BenchmarkArguments, runs: list[dict[str, Any]], summary: dict[str, Any]
) -> dict[str, bool]:
    goals: dict[str, bool] = {}
    gap = paired_gap(runs, "lmbda_1", "off_policy", "reverse_kl")
    if gap is not None and gap["seeds"] >= 3:
        goals["lmbda_1_lowers_reverse_kl_below_off_policy_by_2_standard_errors"] = gap["mean"] > 0 and (
            gap["in_standard_errors"] is None or gap["in_standard_errors"] >= 2
        )
    mixed = [name for name in ON_POLICY_ROWS if name in summary and "exact_match" in summary[name]]
    if args.task == "sorting" and mixed and "off_policy" in summary:
        best = max(summary[name]["exact_match"]["mean"] for name in mixed)
        goals["best_on_policy_or_mixed_row_beats_off_policy_exact_match"] = (
            best > summary["off_policy"]["exact_match"]["mean"]
        )
    if "versus_trl_gkd" in summary.get("lmbda_1", {}):
        gkd = summary["lmbda_1"]["versus_trl_gkd"]
        goals["step_time_at_most_0.5x_trl_gkd_at_lmbda_1"] = gkd["step_time_ratio"] <= 0.5
        goals["peak_memory_at_most_0.5x_trl_gkd_at_lmbda_1"] = gkd.get("peak_memory_ratio", 1.0) <= 0.5
    return goals


def versus(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """hf_enhance's median step time and probed peak memory over another row's."""
    ratios = {"step_time_ratio": ours["median_step_s"] / theirs["median_step_s"]}
    if ours["peak_mib"] and theirs["peak_mib"]:
        ratios["peak_memory_ratio"] = ours["peak_mib"] / theirs["peak_mib"]
    return ratios


def chat_setup(
    args: BenchmarkArguments,
) -> tuple[PreTrainedModel, Any, Dataset, Dataset, PreTrainedModel | None]:
    """Teacher, tokenizer, training rows, held-out rows and (unless tiny) the main job's student."""
    prompts = [
        line.strip() for line in (REPO / "examples" / "prompts.txt").read_text().splitlines() if line.strip()
    ]
    if args.tiny:
        prompts = prompts[:8]
        teacher, tokenizer = tiny_models(prompts)
        start = None
    else:
        folder = Path(args.start)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"--start {folder} holds no distilled student (no config.json): the chat task starts from the "
                "main job's student. Run `accelerate launch examples/distill_gpt2.py` first (it writes "
                "outputs/distill_gpt2), or pass --start with its --output_dir."
            )
        teacher, tokenizer = load_causal_lm(None, torch.float32)
        start = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    teacher.eval()
    train, held_out = prompts[: -args.held_out_prompts], prompts[-args.held_out_prompts :]
    return teacher, tokenizer, chat_rows(args, teacher, tokenizer, train), chat_rows(args, teacher, tokenizer,
                                                                                      held_out), start  # fmt: skip


def built_and_healed(
    args: BenchmarkArguments, teacher: PreTrainedModel, tokenizer: Any, rows: Dataset
) -> PreTrainedModel:  # fmt: skip
    """A student built from ``teacher`` (20 layers, MLP width 1000; tiny: 3 and 48), healed off-policy."""
    calibration = PromptCompletionCollator(tokenizer)(list(rows.select(range(min(8, len(rows))))))
    set_seed(0)
    student = student_from_teacher(
        teacher, num_layers=3 if args.tiny else 20, layer_strategy="skip_divergence",
        intermediate_size=48 if args.tiny else 1000, progress=False,
        calibration=[{"input_ids": calibration["input_ids"], "attention_mask": calibration["attention_mask"]}],
    ).float()  # fmt: skip
    healed, _ = train_row(
        args, "off_policy", student, teacher, tokenizer, rows, seed=0, steps=args.heal_steps
    )
    return healed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if not args.tiny and os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD_BYTES):
        # Peak memory follows the live tensors only with glibc's mmap threshold pinned (see _measure.py).
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)})  # fmt: skip
    began = time.perf_counter()
    made: dict[str, Any] = {}
    test = None
    if args.task == "chat":
        teacher, tokenizer, rows, held_out, start = chat_setup(args)
    else:
        if args.tiny:
            teacher, tokenizer = tiny_models(["Sort these numbers from smallest to largest: 10 20 30 40 50"])
        else:
            teacher, tokenizer = load_causal_lm(None, torch.float32)
        teacher, made["teacher"] = sorting_teacher(teacher, tokenizer, steps=args.teacher_steps,
                                                   cache_dir=args.cache_dir)  # fmt: skip
        teacher.eval()
        rows = sorting_rows(args.max_steps * args.batch_size * 2 + args.heal_steps * args.batch_size, seed=1)
        test = sorting_rows(args.test_problems, seed=2)
        held_out, start = test.select(range(args.held_out_prompts)), None
        made["teacher_exact_match"] = exact_match(teacher, tokenizer, test)
    if start is None:
        start = built_and_healed(args, teacher, tokenizer, rows)
    runs, starts = [], {}
    for seed in args.seed_list:
        starts[seed] = evaluate(args, start, teacher, tokenizer, held_out, test, seed)
        print(f"seed {seed} start: " + json.dumps(starts[seed]), flush=True)
        first = seed == args.seed_list[0]
        for name in args.row_names:
            student, cost = train_row(args, name, start, teacher, tokenizer, rows, seed, args.max_steps,
                                      probe_step=args.probe_step if first else -1)  # fmt: skip
            quality = evaluate(args, student, teacher, tokenizer, held_out, test, seed)
            runs.append({"row": name, "seed": seed, **quality, **cost})
            print(f"seed {seed} {name}: " + json.dumps(quality) + f", step {cost['median_step_s']:.2f} s, "
                  f"peak {cost['peak_mib']} MiB", flush=True)  # fmt: skip
    summary = summarise(runs, starts)
    for trl_row, key in (
        ("trl_gkd_lmbda_1", "versus_trl_gkd"),
        ("trl_distillation", "versus_trl_distillation"),
    ):
        if trl_row in summary and "lmbda_1" in summary:
            summary["lmbda_1"][key] = versus(summary["lmbda_1"], summary[trl_row])
    teacher_side = grade_own_answers(teacher, teacher, tokenizer, list(held_out), max_new_tokens=args.max_new_tokens,
                                     batch_size=16)  # fmt: skip
    payload: dict[str, Any] = {
        "command": " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            **asdict(args),
            "training_dtype": "bfloat16 autocast" if bf16_training(args) else "float32",
            "evaluation_dtype": "float32",
        },
        "teacher": {
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "teacher_nll": teacher_side["teacher_nll_of_own_answers"],
            "entropy": teacher_side["entropy_of_own_answers"],
            **made,
        },
        "start": {
            "parameters": sum(p.numel() for p in start.parameters()),
            "per_seed": starts,
            **mean_over_seeds(list(starts.values())),
        },
        "summary": summary,
        "gaps": {
            f"{worse}_minus_{better}_{metric}": paired_gap(runs, better, worse, metric)
            for better, worse, metric in GAPS
            if metric != "exact_match" or test is not None
        },
        "runs": runs,
    }
    payload["goals"] = goals_of(args, runs, summary)
    payload["environment"] = environment(time.perf_counter() - began)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    output.with_suffix(".md").write_text(markdown(payload))
    return payload


def mean_over_seeds(evaluations: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {metric: mean_and_error([one[metric] for one in evaluations]) for metric in METRICS
            if metric in evaluations[0]}  # fmt: skip


def _cell(value: dict[str, float] | None, digits: int = 3) -> str:
    return "" if value is None else f"{value['mean']:.{digits}f} ± {value['standard_error']:.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    settings, summary = payload["settings"], payload["summary"]
    task = settings["task"]
    lines = [
        f"# On-policy distillation from a healed start ({task})",
        "",
        f"Command: `{payload['command']}`. Every row: {settings['max_steps']} steps of {settings['batch_size']} "
        f"prompts from the same start, completions of up to {settings['max_new_tokens']} tokens sampled at T = 1, "
        f"{settings['divergence']} at T = 1, alpha {settings['alpha']:g} on off-policy steps, learning rate "
        f"{settings['learning_rate']:g}; training {settings['training_dtype']}, evaluation "
        f"{settings['evaluation_dtype']}; seeds {settings['seeds']}; quality on {settings['held_out_prompts']} "
        f"held-out prompts x {settings['eval_samples']} samples per seed. Mean ± standard error over seeds.",
        "",
    ]
    if task == "sorting":
        teacher = payload["teacher"]
        lines += [
            f"Teacher: SmolLM2-135M-Instruct with a merged LoRA adapter ({teacher['teacher']['steps']} steps), exact "
            f"match {teacher['teacher_exact_match']['exact_match']:.1%} on {settings['test_problems']} held-out "
            f"problems. Start: a student built from it, healed off-policy for {settings['heal_steps']} steps.",
            "",
        ]
    start = payload["start"]
    columns = ["reverse_kl", "entropy", "teacher_nll", "answer_length"]
    columns += ["exact_match"] if "exact_match" in start else []
    lines += [
        "| row | " + " | ".join(columns) + " | reverse_kl change | median step s | peak MiB |",
        "|" + "---|" * (len(columns) + 4),
        "| start | " + " | ".join(_cell(start.get(column)) for column in columns) + " | | | |",
    ]
    for name, row in summary.items():
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(
            f"| {name} | "
            + " | ".join(_cell(row.get(column)) for column in columns)
            + f" | {_cell(row.get('reverse_kl_change'))} | {row['median_step_s']:.2f} | {peak} |"
        )
    lines += ["", "Gaps, paired by seed (mean ± standard error):", ""]
    for name, gap in payload["gaps"].items():
        if gap is not None:
            ratio = gap["in_standard_errors"]
            lines.append(
                f"- {name}: {_cell(gap)}" + ("" if ratio is None else f" ({ratio:.1f} standard errors)")
            )
    for key, label in (("versus_trl_gkd", "TRL GKDTrainer lmbda = 1"),
                       ("versus_trl_distillation", "TRL DistillationTrainer")):  # fmt: skip
        ratios = summary.get("lmbda_1", {}).get(key)
        if ratios:
            memory = (
                f", peak memory {ratios['peak_memory_ratio']:.2f}x" if "peak_memory_ratio" in ratios else ""
            )
            lines += [
                "",
                f"hf_enhance lmbda = 1 against {label}: step time {ratios['step_time_ratio']:.2f}x{memory}.",
            ]
    lines += ["", "Goals:", ""] + [
        f"- {name}: {'met' if met else 'missed'}" for name, met in payload["goals"].items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
