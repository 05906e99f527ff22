"""What `DistillationTrainer` is given: the refusals made before any work, and the defaults it fills in."""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import TrainerCallback

from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.sources.lm_cache import TeacherLogitCache
from hf_enhance.distillation.teacher import check_teacher
from hf_enhance.distillation.terms.prompts import PromptCompletionCollator
from hf_enhance.modeling import unwrap

__all__ = ["CacheArgument", "KeepSpecialTokens", "check_trainer_inputs", "with_default_collator"]

CacheArgument = TeacherLogitCache | str | os.PathLike[str]
_SPECIAL_TOKENS = ("eos_token_id", "bos_token_id", "pad_token_id")


def check_trainer_inputs(
    model: nn.Module | None,
    teacher_model: nn.Module | str | None,
    args: Any,
    teacher_cache: CacheArgument | None,
) -> None:
    """Refuse what cannot be distilled before any work: what is wrong, why, and the fix."""
    if not isinstance(args, DistillationTrainingArguments):
        raise TypeError(
            f"args is a {type(args).__name__}, but DistillationTrainer needs DistillationTrainingArguments "
            "(it carries alpha, temperature and the divergence). Build one with the same fields: "
            "DistillationTrainingArguments(**your_args.to_dict()) or pass the distillation fields to it."
        )
    if model is None or (teacher_model is None and teacher_cache is None):
        raise ValueError(
            "DistillationTrainer needs model= (the student) and a teacher: teacher_model= (a model or a "
            "name/path, run online), teacher_cache= (built once by cache_teacher_logits), or both (batches "
            "with cache entries read the cache; generated and uncached ones run the live teacher)."
        )
    if teacher_model is model:
        raise ValueError(
            "teacher_model is the same object as model. The teacher must be a separate, frozen network: "
            "training the student would change the teacher too. Load or copy the teacher separately "
            "(e.g. copy.deepcopy(model) before training)."
        )
    if teacher_model is not None:
        check_teacher(teacher_model, model)
    if teacher_cache is not None and args.hidden_weight > 0:
        raise ValueError(
            f"hidden_weight={args.hidden_weight} compares the student's block outputs with the teacher's, but "
            "teacher_cache= holds only the teacher's top-k log-probabilities, no hidden states. Pass the "
            "teacher as teacher_model= alone (run online) for hidden-state distillation, or set "
            "hidden_weight=0."
        )


def with_default_collator(kwargs: dict[str, Any]) -> None:
    """A training set of ``prompt``/``completion`` or ``messages`` rows, given with a tokenizer and no collator,
    gets `PromptCompletionCollator` (Trainer's default would try to pad the text columns)."""
    columns = set(getattr(kwargs.get("train_dataset"), "column_names", None) or ())
    tokenizer = kwargs.get("processing_class")
    if kwargs.get("data_collator") is None and tokenizer is not None and ({"prompt", "messages"} & columns):
        kwargs["data_collator"] = PromptCompletionCollator(tokenizer)


class KeepSpecialTokens(TrainerCallback):
    """Keep the student's EOS, BOS and PAD ids (config and generation config) as it came to the trainer.

    `Trainer.train` writes the tokenizer's special ids into the model's configs before training starts; a student
    built from its teacher then would save another end of turn than the teacher's (a GGUF tokenizer's EOS, say).
    The ids are put back when training begins, before any checkpoint is written.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)
        self.saved = {
            name: {token: getattr(config, token, None) for token in _SPECIAL_TOKENS}
            for name, config in self._configs().items()
        }

    def _configs(self) -> dict[str, Any]:
        configs = {"config": getattr(self.model, "config", None)}
        configs["generation_config"] = getattr(self.model, "generation_config", None)
        return {name: config for name, config in configs.items() if config is not None}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for name, config in self._configs().items():
            for token, value in self.saved.get(name, {}).items():
                setattr(config, token, value)
