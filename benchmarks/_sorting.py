"""A generation task with exact answers, for on-policy distillation: sort a list of two-digit numbers.

- `sorting_rows`: seeded problems as chat ``messages`` (the user's list, the assistant's sorted list).
- `sorting_teacher`: SmolLM2-135M-Instruct fine-tuned on the task with a LoRA adapter (`lora_config`), merged
  into a plain model and cached on disk, so the task has a competent teacher.
- `exact_match`: the share of problems a model answers exactly right, answering greedily (with a standard error).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, Trainer, TrainingArguments

from hf_enhance import PromptCompletionCollator, lora_config
from hf_enhance.distillation.terms.on_policy import generation_mode, sample_completions
from hf_enhance.distillation.terms.prompts import stop_token_ids

INSTRUCTION = "Sort these numbers from smallest to largest: "


def sorting_rows(count: int, seed: int, length: int = 5) -> Dataset:
    """``count`` problems of ``length`` distinct numbers from 10 to 99, drawn with ``seed``."""
    draw = random.Random(seed)
    messages = []
    for _ in range(count):
        numbers = draw.sample(range(10, 100), length)
        messages.append(
            [
                {"role": "user", "content": INSTRUCTION + " ".join(map(str, numbers))},
                {"role": "assistant", "content": " ".join(map(str, sorted(numbers)))},
            ]
        )
    return Dataset.from_dict({"messages": messages})


def exact_match(
    model: PreTrainedModel, tokenizer: Any, rows: Dataset, batch_size: int = 32, max_new_tokens: int = 24
) -> dict[str, float]:
    """Greedy answers to ``rows``; the share equal to the reference answer (whitespace-trimmed) and its standard
    error over the problems."""
    collator = PromptCompletionCollator(tokenizer)
    stops = stop_token_ids(tokenizer, model)
    right = 0
    with generation_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = list(rows.select(range(start, min(start + batch_size, len(rows)))))
            batch = collator(chunk)
            answers = sample_completions(
                model, batch["prompt_input_ids"], batch["prompt_attention_mask"], max_new_tokens=max_new_tokens,
                temperature=0.0, top_p=1.0, top_k=0, pad_token_id=collator.pad_token_id, eos_token_id=stops,
            )  # fmt: skip
            for row, answer in zip(
                chunk, tokenizer.batch_decode(answers, skip_special_tokens=True), strict=True
            ):
                right += int(answer.strip() == row["messages"][-1]["content"])
    share = right / len(rows)
    return {"exact_match": share, "standard_error": math.sqrt(share * (1 - share) / len(rows))}


def sorting_teacher(
    base: PreTrainedModel,
    tokenizer: Any,
    *,
    steps: int,
    cache_dir: str | Path,
    batch_size: int = 16,
    bf16: bool = False,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """``base`` fine-tuned on `sorting_rows` (seed 0) with LoRA on every linear layer for ``steps`` steps (bfloat16
    autocast with ``bf16``), merged; loaded from ``cache_dir`` when an identical run was saved there. Returns the
    model and how it was made."""
    recipe = {"base": base.name_or_path, "base_parameters": sum(p.numel() for p in base.parameters()),
              "steps": steps, "batch_size": batch_size, "rows_seed": 0, "lora": "all-linear r16 alpha32",
              "learning_rate": 1e-3, "bf16": bf16}  # fmt: skip
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() / f"sorting_teacher_{key}"
    if (folder / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), recipe
    config = lora_config(base, preset="all-linear", r=16, lora_alpha=32, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    training = TrainingArguments(
        output_dir=str(folder) + ".tmp", max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=recipe["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=25,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, remove_unused_columns=False, bf16=bf16,
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=sorting_rows(steps * batch_size, seed=0),
                      data_collator=PromptCompletionCollator(tokenizer), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(folder)
    return merged, recipe
