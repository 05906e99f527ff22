"""Teacher handling: loading by name, freezing, task detection and output-size checks."""

from __future__ import annotations

import os
import warnings
from typing import Any

from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)

from hf_enhance.modeling import check_weights_present, unwrap

_TASK_AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
}
_TASK_CLASS_NAMES = {
    "causal_lm": set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()),
    "classification": set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()),
    "token_classification": set(MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES.values()),
}


def detect_task(model: nn.Module) -> str | None:
    """`causal_lm`, `classification` or `token_classification` from the model's class; None if unknown."""
    class_name = type(unwrap(model)).__name__
    for task, names in _TASK_CLASS_NAMES.items():
        if class_name in names or (task == "causal_lm" and class_name.endswith("ForCausalLM")):
            return task
    if class_name.endswith("ForSequenceClassification"):
        return "classification"
    if class_name.endswith("ForTokenClassification"):
        return "token_classification"
    return None


def output_size(model: nn.Module, task: str | None) -> int | None:
    """Number of logit columns the model produces (vocabulary rows or labels), when it can be read off."""
    base = unwrap(model)
    if task == "causal_lm" and isinstance(base, PreTrainedModel):
        head = base.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            # A ZeRO-3 partitioned weight is empty between forwards; `ds_shape` is its full shape.
            return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
        return int(base.config.vocab_size)
    config = getattr(base, "config", None)
    if task in ("classification", "token_classification") and config is not None:
        return int(config.num_labels)
    return None


def check_teacher(teacher: Any, student: nn.Module) -> None:
    """Refuse a teacher that cannot serve: not a model, weights on the meta device, or weights the student uses."""
    if isinstance(teacher, (str, os.PathLike)):
        return
    if not isinstance(teacher, nn.Module):
        raise TypeError(
            f"teacher_model is a {type(teacher).__name__}, not a model. Pass an nn.Module (e.g. "
            "AutoModelForCausalLM.from_pretrained(...)), a hub name or local path, or teacher_cache= for a cache."
        )
    check_weights_present(teacher)
    student_tensors = {
        p.data_ptr(): name for name, p in student.named_parameters() if p.device.type != "meta"
    }
    shared = [
        (name, student_tensors[p.data_ptr()])
        for name, p in teacher.named_parameters()
        if p.data_ptr() in student_tensors
    ]
    if shared:
        teacher_name, student_name = shared[0]
        raise ValueError(
            f"The teacher shares {len(shared)} parameter(s) with the student (teacher {teacher_name} is student "
            f"{student_name}). Freezing the teacher would silently stop those from training in the student, and "
            "training the student would change the teacher. Give the student its own copy: "
            "copy.deepcopy(teacher) before building the student, or clone the shared modules."
        )


def load_teacher(
    teacher: nn.Module | str, student: nn.Module, task: str, init_kwargs: dict[str, Any] | None
) -> nn.Module:
    """Return the teacher, loading it with the student's task class and dtype when given as a name or path."""
    if not isinstance(teacher, (str, os.PathLike)):
        return teacher
    kwargs = dict(init_kwargs or {})
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:
        kwargs["dtype"] = next(student.parameters()).dtype
    if task == "classification" and "num_labels" not in kwargs:
        num_labels = output_size(student, task)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
    try:
        return _TASK_AUTO_CLASSES[task].from_pretrained(teacher, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the teacher {str(teacher)!r} as a {task} model: {str(error).rstrip('.')}. Check the "
            "name or path; "
            "with HF_HUB_OFFLINE=1 (or no network) only models already in the local cache or on disk load."
        ) from error


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher is a fixed function of the inputs."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def shared_output_size(
    student_size: int | None, teacher_size: int | None, task: str, tokenizer_size: int | None
) -> int | None:
    """Columns to compare on. Equal sizes, or (causal LM) only vocabulary padding under a shared tokenizer.

    Raises a ValueError when the sizes differ for any other reason.
    """
    if student_size is None or teacher_size is None or student_size == teacher_size:
        return student_size if teacher_size is None else teacher_size
    what = "vocabulary size (lm_head rows)" if task == "causal_lm" else "number of labels"
    if (
        task == "causal_lm"
        and tokenizer_size is not None
        and tokenizer_size <= min(student_size, teacher_size)
    ):
        warnings.warn(
            f"Teacher and student {what} differ ({teacher_size} vs {student_size}) but the tokenizer has only "
            f"{tokenizer_size} tokens, so the extra rows are embedding padding. Distilling on the first "
            f"{min(student_size, teacher_size)} columns.",
            stacklevel=3,
        )
        return min(student_size, teacher_size)
    hint = (
        " If the difference is only embedding padding (e.g. 50304 vs 50257 rows) and both models share one "
        "tokenizer, pass it as processing_class=tokenizer so the trainer can check that."
        if task == "causal_lm" and tokenizer_size is None
        else ""
    )
    raise ValueError(
        f"Teacher {what} is {teacher_size} but the student's is {student_size}. Distillation compares the two "
        f"output distributions column by column, so both models must predict over the same classes/tokens. Use "
        f"a student with the teacher's tokenizer/label set (resize its head to {teacher_size}).{hint}"
    )


def tokenizer_size(processing_class: Any) -> int | None:
    """len(tokenizer) for a tokenizer or a processor holding one; None otherwise."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    try:
        return len(tokenizer)
    except TypeError:
        return None
