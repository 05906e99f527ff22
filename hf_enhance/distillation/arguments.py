"""`DistillationTrainingArguments`: the training arguments plus the distillation settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hf_enhance.objectives.hidden_states import HIDDEN_DISTANCES, check_hidden_weight
from hf_enhance.objectives.settings import DIVERGENCE_KINDS, LossSettings
from hf_enhance.training import EnhancedTrainingArguments

DISTILLATION_TASKS: tuple[str, ...] = ("auto", "causal_lm", "classification", "token_classification")
LMBDA_SCHEDULES: tuple[str, ...] = ("constant", "linear", "switch")


@dataclass
class DistillationTrainingArguments(EnhancedTrainingArguments):
    """`EnhancedTrainingArguments` (early stopping, clipping) plus what distillation needs.

    loss = alpha · T² · D(teacher_T ‖ student_T) + (1 − alpha) · CE(student, labels) + hidden_weight · hidden_loss
    """

    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation term in [0, 1]: 1 = pure distillation, 0 = labels only."
        },
    )
    temperature: float = field(
        default=2.0,
        metadata={
            "help": "Softening temperature T > 0 applied to both models' logits in the distillation term."
        },
    )
    distillation_loss: str = field(
        default="forward_kl",
        metadata={
            "help": "Divergence between teacher and student: forward_kl = KL(teacher‖student) (Hinton et al.), "
            "reverse_kl = KL(student‖teacher), jsd = generalized Jensen-Shannon of GKD (see jsd_beta).",
            "choices": list(DIVERGENCE_KINDS),
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "JSD interpolation in [0, 1]: mixture M = beta·p_teacher + (1−beta)·p_student; 0 = forward "
            "KL end, 1 = reverse KL end, 0.5 = symmetric JSD. Used only with distillation_loss='jsd'."
        },
    )
    distillation_task: str = field(
        default="auto",
        metadata={
            "help": "How logits align with labels: causal_lm (shift by one), classification ([B, C] vs [B]), "
            "token_classification ([B, L, C] vs [B, L], no shift), or auto (from the student model's class).",
            "choices": list(DISTILLATION_TASKS),
        },
    )
    fused_loss: bool = field(
        default=True,
        metadata={
            "help": "Causal LMs: compute the objective from final hidden states and LM-head weights, chunk by "
            "chunk over tokens (hf_enhance.fused_distillation_loss), so no [tokens, vocab] logits are held. "
            "Used in training steps whose micro-batch has more tokens than one chunk; falls back to logits with one "
            "warning where it cannot apply (FSDP1, adapted or post-processed heads)."
        },
    )
    fused_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per chunk of the fused objective: peak extra memory grows with chunk × vocab. None: "
            "from the vocabulary (hf_enhance.objectives.fused.default_chunk_size: the largest power of two "
            "whose float32 [chunk, vocab] buffer stays within 32 MiB on CPU or 512 MiB on a CUDA device, between 32 "
            "and 1024; 128 at V = 49152 on CPU, 1024 on a GPU)."
        },
    )
    hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the intermediate-layer term: the distance between student block outputs and the "
            "mapped teacher block outputs (see hidden_layer_map), averaged over layers and the tokens the KD term "
            "uses. 0 = off; must be finite and >= 0."
        },
    )
    hidden_distance: str = field(
        default="cosine",
        metadata={
            "help": "Per-token distance of the hidden-state term: cosine = 1 − cos(student, teacher), mse = mean "
            "over features of (student − teacher)². Differing widths are bridged by a learned projection.",
            "choices": list(HIDDEN_DISTANCES),
        },
    )
    hidden_layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher block index per student block, e.g. --hidden_layer_map 1 3 5 for 3 student blocks: "
            "student block i's output is compared with teacher block map[i]'s. Default: the teacher layers the "
            "student was built from (config.hf_enhance_student['layers']), else a uniform map, last to last."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy fraction (GKD's lambda) in [0, 1]: the share of optimizer steps whose completions "
            "the student samples itself (the teacher then grades every token of them). 0 = off-policy (the "
            "dataset's or, with seq_kd, the teacher's completions), 1 = fully on-policy. Needs prompt/completion "
            "batches (PromptCompletionCollator)."
        },
    )
    lmbda_schedule: str = field(
        default="constant",
        metadata={
            "help": "How the on-policy fraction moves within the run (one optimizer, one learning-rate schedule): "
            "constant = lmbda at every step; linear = from 0 at step 0 up to lmbda at step lmbda_steps; switch = "
            "off-policy before step lmbda_steps, lmbda from it (a healed start, then on-policy).",
            "choices": list(LMBDA_SCHEDULES),
        },
    )
    lmbda_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps of the linear ramp, or the step at which 'switch' turns lmbda on."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={"help": "Off-policy steps train on completions the teacher samples (sequence-level KD)."},
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "Tokens sampled per completion on generating steps (lmbda > 0, seq_kd)."},
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of generated completions; 0 = greedy. Not the KD temperature."
        },
    )
    generation_top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling of generated completions."}
    )
    generation_top_k: int = field(
        default=0, metadata={"help": "Top-k sampling of generated completions; 0 = no top-k filter."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments (dict or JSON string) for from_pretrained when teacher_model is a name or "
            'path, e.g. \'{"dtype": "bfloat16"}\'. By default the teacher is loaded in the student\'s dtype.'
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.loss_settings()
        if self.distillation_task not in DISTILLATION_TASKS:
            raise ValueError(
                f"Unknown distillation_task {self.distillation_task!r}. Valid choices: "
                f"{', '.join(DISTILLATION_TASKS)}."
            )
        if self.fused_chunk_size is not None and self.fused_chunk_size < 1:
            raise ValueError(
                f"fused_chunk_size={self.fused_chunk_size} must be >= 1: it is the number of tokens whose logits "
                "the fused objective builds at a time. Leave it None to size it from the vocabulary; lower it "
                "to save memory."
            )
        self._check_hidden_settings()
        self._check_generation_settings()
        if isinstance(self.teacher_model_init_kwargs, str):
            try:
                self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"teacher_model_init_kwargs={self.teacher_model_init_kwargs!r} is not valid JSON ({error}). "
                    'Pass a JSON object such as \'{"dtype": "bfloat16"}\'.'
                ) from error

    def loss_settings(self) -> LossSettings:
        """The objective's settings (checked): alpha, temperature, distillation_loss as the divergence, jsd_beta."""
        return LossSettings(self.alpha, self.temperature, self.distillation_loss, self.jsd_beta)

    def _check_generation_settings(self) -> None:
        """Validate lmbda and the sampling settings of generated completions."""
        if (
            isinstance(self.lmbda, bool)
            or not isinstance(self.lmbda, (int, float))
            or not 0 <= self.lmbda <= 1
        ):
            raise ValueError(
                f"lmbda={self.lmbda!r} must be a number in [0, 1]: the share of steps trained on the student's own "
                "samples (0 = off-policy, 1 = fully on-policy, 0.5 = GKD's mix)."
            )
        if self.lmbda_schedule not in LMBDA_SCHEDULES:
            raise ValueError(
                f"Unknown lmbda_schedule {self.lmbda_schedule!r}. Valid choices: {', '.join(LMBDA_SCHEDULES)}."
            )
        if (
            isinstance(self.lmbda_steps, bool)
            or not isinstance(self.lmbda_steps, int)
            or self.lmbda_steps < 0
        ):
            raise ValueError(
                f"lmbda_steps={self.lmbda_steps!r} must be an int >= 0: the optimizer steps of the linear ramp, "
                "or the step at which lmbda_schedule='switch' turns on-policy training on."
            )
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens!r} must be an int >= 1: the length of generated completions."
            )
        temperature, top_p, top_k = self.generation_temperature, self.generation_top_p, self.generation_top_k
        if not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf"):
            raise ValueError(
                f"generation_temperature={temperature!r} must be a finite number >= 0 (0 = greedy)."
            )
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"generation_top_p={top_p!r} must be in (0, 1] (1 = no nucleus filter).")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"generation_top_k={top_k!r} must be an int >= 0 (0 = no top-k filter).")

    def _check_hidden_settings(self) -> None:
        """Validate hidden_weight, hidden_distance and the entries of hidden_layer_map (ranges: the trainer)."""
        check_hidden_weight(self.hidden_weight)
        if self.hidden_distance not in HIDDEN_DISTANCES:
            raise ValueError(
                f"Unknown hidden_distance {self.hidden_distance!r}. Valid choices: {', '.join(HIDDEN_DISTANCES)}."
            )
        if self.hidden_layer_map is not None:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.hidden_layer_map):
                raise ValueError(
                    f"hidden_layer_map={self.hidden_layer_map!r} must be a list of teacher block indices (ints), "
                    "one per student block, e.g. [1, 3, 5] (--hidden_layer_map 1 3 5)."
                )
            self.hidden_layer_map = list(self.hidden_layer_map)
