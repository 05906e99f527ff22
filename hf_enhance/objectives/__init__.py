"""The distillation objectives as pure tensor code: torch only (no transformers, no accelerate, no trainer).

`distillation_loss` on logits is the float32 autograd reference; `fused_distillation_loss` computes the same from
final hidden states and head weights, chunk by chunk (`Vocabulary` / `ShardedVocabulary` serve one process or a
vocabulary-parallel group); `sparse_distillation_loss` reads a teacher's cached top-k; `hidden_state_loss` is the
intermediate-layer term. `LossSettings` is the one validated set of their settings.
"""

from hf_enhance.objectives.fused import default_chunk_size, fused_distillation_loss
from hf_enhance.objectives.hidden_states import hidden_state_loss, hidden_token_count, uniform_layer_map
from hf_enhance.objectives.losses import DistillationOutput, distillation_loss, divergence
from hf_enhance.objectives.settings import DIVERGENCE_KINDS, DivergenceKind, LossSettings
from hf_enhance.objectives.sparse import sparse_distillation_loss
from hf_enhance.objectives.vocab import ShardedVocabulary, Vocabulary

__all__ = [
    "DIVERGENCE_KINDS",
    "DistillationOutput",
    "DivergenceKind",
    "LossSettings",
    "ShardedVocabulary",
    "Vocabulary",
    "default_chunk_size",
    "distillation_loss",
    "divergence",
    "fused_distillation_loss",
    "hidden_state_loss",
    "hidden_token_count",
    "sparse_distillation_loss",
    "uniform_layer_map",
]
