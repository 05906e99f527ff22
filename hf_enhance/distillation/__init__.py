"""Knowledge distillation: a `transformers.Trainer` that applies the objectives of `hf_enhance.objectives`."""

from hf_enhance.distillation import _moved

_moved.install()

# ruff: noqa: E402
from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.placement.fsdp2 import shard_teacher, vocab_parallel_distillation_loss
from hf_enhance.distillation.report import TeacherStudentReport, grade_own_answers, teacher_student_report
from hf_enhance.distillation.sources.classifier_cache import CachedTeacher
from hf_enhance.distillation.sources.lm_cache import (
    TeacherCacheCollator,
    TeacherLogitCache,
    cache_teacher_logits,
    load_teacher_cache,
    with_teacher_cache,
)
from hf_enhance.distillation.sources.teacher_texts import generate_teacher_texts
from hf_enhance.distillation.terms.prompts import PromptCompletionCollator
from hf_enhance.distillation.trainer import DistillationTrainer
from hf_enhance.objectives.fused import fused_distillation_loss
from hf_enhance.objectives.hidden_states import hidden_state_loss
from hf_enhance.objectives.losses import DistillationOutput, distillation_loss
from hf_enhance.objectives.sparse import sparse_distillation_loss
from hf_enhance.students.gru import GRUClassifier

__all__ = [
    "CachedTeacher",
    "DistillationOutput",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "GRUClassifier",
    "PromptCompletionCollator",
    "TeacherCacheCollator",
    "TeacherLogitCache",
    "TeacherStudentReport",
    "cache_teacher_logits",
    "distillation_loss",
    "fused_distillation_loss",
    "generate_teacher_texts",
    "grade_own_answers",
    "hidden_state_loss",
    "load_teacher_cache",
    "shard_teacher",
    "sparse_distillation_loss",
    "teacher_student_report",
    "vocab_parallel_distillation_loss",
    "with_teacher_cache",
]
