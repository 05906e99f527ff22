"""Sane training defaults: early stopping, gradient clipping (incl. adaptive) and the trainer that applies them."""

from hf_enhance.training.arguments import CLIP_MODES, EnhancedTrainingArguments
from hf_enhance.training.clipping import ADAPTIVE_CLIP_METHODS, AdaptiveGradClip
from hf_enhance.training.early_stopping import EarlyStopping
from hf_enhance.training.trainer import EnhancedTrainer

__all__ = [
    "ADAPTIVE_CLIP_METHODS",
    "CLIP_MODES",
    "AdaptiveGradClip",
    "EarlyStopping",
    "EnhancedTrainer",
    "EnhancedTrainingArguments",
]
