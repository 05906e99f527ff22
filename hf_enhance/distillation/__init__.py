"""Knowledge distillation: the objective as pure functions and a `transformers.Trainer` that applies it."""

from hf_enhance.distillation.arguments import DistillationTrainingArguments
from hf_enhance.distillation.classifier_cache import CachedTeacher
from hf_enhance.distillation.data import generate_teacher_texts
from hf_enhance.distillation.fused import fused_distillation_loss
from hf_enhance.distillation.intermediate import hidden_state_loss
from hf_enhance.distillation.lm_cache import (
    TeacherCacheCollator,
    TeacherLogitCache,
    cache_teacher_logits,
    load_teacher_cache,
    with_teacher_cache,
)
from hf_enhance.distillation.losses import DistillationOutput, distillation_loss
from hf_enhance.distillation.on_policy import PromptCompletionCollator
from hf_enhance.distillation.report import TeacherStudentReport, teacher_student_report
from hf_enhance.distillation.sharded import shard_teacher, vocab_parallel_distillation_loss
from hf_enhance.distillation.sparse import sparse_distillation_loss
from hf_enhance.distillation.students import GRUClassifier
from hf_enhance.distillation.trainer import DistillationTrainer

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
    "hidden_state_loss",
    "load_teacher_cache",
    "shard_teacher",
    "sparse_distillation_loss",
    "teacher_student_report",
    "vocab_parallel_distillation_loss",
    "with_teacher_cache",
]
