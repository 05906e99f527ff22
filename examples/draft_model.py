"""Distil a draft model for speculative decoding: a few of the teacher's own layers, off-policy then on-policy.

    python examples/draft_model.py     # SmolLM2-135M-Instruct (offline) and a 4-layer draft (~20 min, 2 CPUs)

A draft model proposes tokens that the teacher checks in one forward pass (assisted generation,
``teacher.generate(..., assistant_model=draft)``); the teacher's greedy output is unchanged and each accepted
token saves one of its forward passes. What counts is how often the draft's greedy token is the teacher's on the
teacher's own answers (the acceptance rate), and how cheap the draft is.

1. The teacher answers the training prompts (`examples/prompts.txt` but the last ``--held_out_prompts``, through its
   chat template, ``--samples_per_prompt`` each; cached under ``~/.cache/hf_enhance``).
2. The draft is `student_from_teacher(teacher, num_layers=--draft_layers)`: the layers whose skipping changes the
   teacher's output most, with the teacher's embeddings and head.
3. One `DistillationTrainer` run: ``--off_policy_steps`` on the teacher's answers, then ``--on_policy_steps`` on
   the draft's own samples (``lmbda_schedule="switch"``: one optimizer, one learning-rate schedule), reverse KL at
   T = 1 throughout. With ``--compare`` (default), a copy of the same draft trains off-policy for as many steps in
   all, so the on-policy phase is measured against more of the same.
4. `teacher_student_report` on the held-out prompts, for the untrained draft and each trained one: the acceptance
   rate, assisted generation timed against the teacher alone (and whether the output is identical), the draft's
   KL to the teacher on its own samples.

Writes the draft (reload with ``AutoModelForCausalLM.from_pretrained``) and ``draft_report.json`` to
``--output_dir``; prints one table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from lm_utils import load_causal_lm
from transformers import HfArgumentParser, PreTrainedModel, set_seed

from hf_enhance import (
    DistillationTrainer,
    DistillationTrainingArguments,
    PromptCompletionCollator,
    student_from_teacher,
    teacher_student_report,
)
from hf_enhance.distillation.sources.teacher_texts import generate_teacher_texts

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.txt"


@dataclass
class DraftArguments:
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher: a local model folder or .gguf file. Default: SmolLM2-135M-Instruct (offline)."
        },
    )
    prompts_file: str = field(default=str(PROMPTS_FILE), metadata={"help": "One prompt per line."})
    held_out_prompts: int = field(default=13, metadata={"help": "The last prompts, kept for the report."})
    samples_per_prompt: int = field(default=2, metadata={"help": "Teacher answers per training prompt."})
    draft_layers: int = field(default=4, metadata={"help": "Teacher layers the draft keeps."})
    off_policy_steps: int = field(default=60, metadata={"help": "Steps on the teacher's answers."})
    on_policy_steps: int = field(
        default=40, metadata={"help": "Steps on the draft's own samples, after them."}
    )
    compare: bool = field(
        default=True,
        metadata={"help": "Also train a copy off-policy for all the steps, and report it next to the draft."},
    )
    report_rows: int = field(default=8, metadata={"help": "Held-out prompts the draft is timed on."})
    cache_dir: str = field(
        default="~/.cache/hf_enhance", metadata={"help": "Where the teacher's answers are cached."}
    )


@dataclass
class DraftTrainingArguments(DistillationTrainingArguments):
    """`DistillationTrainingArguments` with the draft recipe as defaults."""

    output_dir: str | None = field(default="outputs/draft_model", metadata={"help": "Where the draft goes."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a fraction: of all steps)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Prompts per device per step."})
    distillation_loss: str = field(default="reverse_kl", metadata={"help": "Mode-seeking: greedy agreement."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the divergence."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the divergence on off-policy steps."})
    max_new_tokens: int = field(
        default=48, metadata={"help": "Tokens per answer: the teacher's, the draft's samples, the report's."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Steps between training-loss logs."})
    save_strategy: str = field(default="no", metadata={"help": "The draft is saved once, at the end."})
    eval_strategy: str = field(default="no", metadata={"help": "The report evaluates, after training."})
    load_best_model_at_end: bool = field(default=False, metadata={"help": "No evaluation, so no best model."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "No evaluation, no stopping."}
    )


def read_prompts(args: DraftArguments) -> dict[str, list[str]]:
    """The training and held-out prompts, checked before any model loads."""
    path = Path(args.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"--prompts_file {path} does not exist: give a text file with one prompt per line."
        )
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(prompts) <= args.held_out_prompts or args.held_out_prompts < 1:
        raise ValueError(
            f"{path} has {len(prompts)} prompts and --held_out_prompts is {args.held_out_prompts}: the report needs "
            "at least one held-out prompt and training at least one more; give more prompts or change the split."
        )
    return {"train": prompts[: -args.held_out_prompts], "held_out": prompts[-args.held_out_prompts :]}


def teacher_answers(
    args: DraftArguments, prompts: dict[str, list[str]], teacher: PreTrainedModel, tokenizer: Any,
    max_new_tokens: int,
) -> dict[str, Dataset]:  # fmt: skip
    """Per split, each prompt with a teacher answer: chat messages where the tokenizer has a chat template,
    prompt / completion text otherwise."""
    chat = tokenizer.chat_template is not None
    rows = {}
    for name, chosen in prompts.items():
        texts = generate_teacher_texts(
            teacher, tokenizer, chosen, samples_per_prompt=args.samples_per_prompt if name == "train" else 1,
            max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95, chat_template=chat,
            cache_dir=args.cache_dir,
        )  # fmt: skip
        pairs = zip(texts["prompt"], texts["text"], strict=True)
        rows[name] = Dataset.from_dict(
            {
                "messages": [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": t}] for p, t in pairs
                ]
            }
            if chat
            else {"prompt": list(texts["prompt"]), "completion": list(texts["text"])}
        )
    return rows


def train(
    draft: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any, rows: Dataset,
    training_args: DraftTrainingArguments, off_policy_steps: int, on_policy_steps: int,
) -> PreTrainedModel:  # fmt: skip
    """``draft`` trained off-policy for ``off_policy_steps``, then on its own samples for ``on_policy_steps``."""
    args = dataclasses.replace(
        training_args, max_steps=off_policy_steps + on_policy_steps, lmbda=1.0 if on_policy_steps else 0.0,
        lmbda_schedule="switch", lmbda_steps=off_policy_steps,
    )  # fmt: skip
    set_seed(args.seed)
    trainer = DistillationTrainer(model=draft, teacher_model=teacher, args=args, train_dataset=rows,
                                  processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()


def report_row(
    name: str, draft: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any, held_out: Dataset,
    args: DraftArguments, max_new_tokens: int,
) -> dict[str, Any]:  # fmt: skip
    report = teacher_student_report(teacher, draft, tokenizer, held_out, max_new_tokens=max_new_tokens,
                                    temperature=1.0, draft_rows=args.report_rows)  # fmt: skip
    return {
        "draft": name,
        "acceptance": report.draft_acceptance,
        "assisted_speedup": report.assisted["speedup"],
        "identical_output": report.assisted["identical_output"],
        "reverse_kl_of_own_answers": report.student.reverse_kl_of_own_answers,
        "teacher_seconds": report.assisted["teacher_seconds"],
        "assisted_seconds": report.assisted["assisted_seconds"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser((DraftArguments, DraftTrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    began = time.perf_counter()
    prompts = read_prompts(args)
    teacher, tokenizer = load_causal_lm(args.teacher, torch.float32)
    teacher.eval()
    answers = teacher_answers(args, prompts, teacher, tokenizer, training_args.max_new_tokens)
    rows, held_out = answers["train"], answers["held_out"]
    calibration = PromptCompletionCollator(tokenizer)(list(rows.select(range(min(16, len(rows))))))
    start = student_from_teacher(
        teacher, num_layers=args.draft_layers, layer_strategy="skip_divergence",
        calibration=[{"input_ids": calibration["input_ids"], "attention_mask": calibration["attention_mask"]}],
    )  # fmt: skip
    drafts = {"built, untrained": start}
    total = args.off_policy_steps + args.on_policy_steps
    if args.compare:
        drafts[f"off-policy {total} steps"] = train(copy.deepcopy(start), teacher, tokenizer, rows, training_args, total, 0)  # fmt: skip
    final_name = f"off-policy {args.off_policy_steps} + on-policy {args.on_policy_steps} steps"
    drafts[final_name] = train(copy.deepcopy(start), teacher, tokenizer, rows, training_args,
                               args.off_policy_steps, args.on_policy_steps)  # fmt: skip
    output_dir = Path(training_args.output_dir)
    drafts[final_name].save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    results = {
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "draft_parameters": sum(p.numel() for p in start.parameters()),
        "rows": [
            report_row(name, draft, teacher, tokenizer, held_out, args, training_args.max_new_tokens)
            for name, draft in drafts.items()
        ],
        "wall_s": round(time.perf_counter() - began, 1),
    }
    (output_dir / "draft_report.json").write_text(json.dumps(results, indent=2))
    print(
        f"Draft: {results['draft_parameters'] / 1e6:.1f}M parameters, "
        f"{results['draft_parameters'] / results['teacher_parameters']:.2f}x the teacher's. On "
        f"{args.report_rows} held-out prompts, greedy, {training_args.max_new_tokens} tokens:"
    )
    for row in results["rows"]:
        same = "same output" if row["identical_output"] else "NOT the same output"
        print(f"  {row['draft']:<42} acceptance {row['acceptance']:.1%}, assisted {row['assisted_speedup']:.2f}x "
              f"the teacher alone ({same}), KL(draft || teacher) {row['reverse_kl_of_own_answers']:.3f}")  # fmt: skip
    print(f"Wall time {results['wall_s']:.0f} s. Wrote the draft and draft_report.json to {output_dir}")
    return results


if __name__ == "__main__":
    main()
