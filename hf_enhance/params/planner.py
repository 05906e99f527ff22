"""Per-GPU memory of a teacher + student distillation run under four set-ups, before downloading anything.

`plan_distillation_memory` counts both models on the meta device (`count_parameters`, method ``"full"``) and
prices them with the params ``bf16`` setup (`estimate_memory`): the models loaded in bfloat16, a trained
parameter costing 2 bytes of weight, 2 of gradient and 4 of AdamW states, the frozen teacher 2 bytes of weight.
Activations, the CUDA context, communication buffers and allocator fragmentation are not estimated: they
depend on sequence length, activation checkpointing and kernels, not on the parameters.

The set-ups (N = number of GPUs):

* ``replicated`` (DDP): the student's weights, gradients and AdamW states and the teacher's weights whole on
  every GPU.
* ``fsdp2``: student states and teacher weights divided by N (the teacher sharded with FSDP2 ``fully_shard``
  per decoder block, frozen: no gradients, no optimizer states), plus the units FSDP2 gathers (`_fsdp2_gathered`)
  and the vocabulary-parallel fused loss on each rank's rows of the heads.
* ``zero3`` (DeepSpeed ZeRO-3): the same sharded student states and teacher weights, plus the gathered
  parameters DeepSpeed lets live at once or the two LM heads the fused objective gathers for its call
  (`_zero3_gathered`), and the fused loss on the whole heads.
* ``offline_cache``: no teacher in GPU memory (its top-k log-probabilities were cached to disk beforehand,
  `cache_teacher_logits`), the student replicated (DDP); the loss reads the student's full logits
  (`_sparse_loss_bytes`). The plan also prices the cache on disk (`cache_bytes_per_token`).

The loss working memory of the live-teacher set-ups is that of the fused, chunked objective
(`fused_distillation_loss`, the trainer's default, `_fused_loss_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from hf_enhance.modeling import meta_model, repeated_blocks
from hf_enhance.objectives.fused import default_chunk_size
from hf_enhance.params.counting import count_parameters
from hf_enhance.params.names import DEFAULT_TOP_K
from hf_enhance.params.result import ParameterCount
from hf_enhance.params.zoo import MODEL_ZOO, zoo_config

__all__ = [
    "DEFAULT_TOP_K",
    "PLAN_SETUPS",
    "STAGE3_MAX_LIVE_PARAMETERS",
    "MemoryPlan",
    "SetupPlan",
    "cache_bytes_per_token",
    "cache_id_dtype",
    "plan_distillation_memory",
]

PLAN_SETUPS: dict[str, str] = {
    "replicated": "DDP: student weights, gradients, AdamW states and teacher weights whole on every GPU",
    "fsdp2": "FSDP2: student states and teacher weights sharded over the GPUs, one block gathered at a time",
    "zero3": "DeepSpeed ZeRO-3: student states and teacher weights partitioned over the GPUs",
    "offline_cache": "teacher top-k cached on disk beforehand, no teacher in GPU memory; student replicated (DDP)",
}

"""Ids kept per token by `cache_teacher_logits` (its ``top_k`` default)."""

STAGE3_MAX_LIVE_PARAMETERS = 10**9
"""DeepSpeed's default ``zero_optimization.stage3_max_live_parameters``: the most gathered parameters a rank
keeps before releasing them."""

_BF16 = 2
_FP32 = 4
_FUSED_CHUNK_BUFFERS = 5
# The cache's id column is uint16 when the vocabulary fits in it, else int32 (lm_cache._arrow_table).
_UINT16_IDS = 2**16
_ID_BYTES = {"uint16": 2, "int32": 4}


@dataclass(frozen=True)
class SetupPlan:
    """Bytes per GPU of one set-up; ``total`` is the sum of the four parts."""

    name: str = field(metadata={"help": f"One of {list(PLAN_SETUPS)}."})
    student_states: int = field(
        metadata={
            "help": "The student's weights, gradients and AdamW states on one GPU (its shard, if sharded)."
        }
    )
    teacher_weights: int = field(metadata={"help": "The frozen teacher's weights on one GPU (0 offline)."})
    gathered: int = field(
        metadata={"help": "Transient unsharded parameters of FSDP2 units or ZeRO-3 live parameters."}
    )
    loss_buffers: int = field(
        metadata={"help": "Working memory of the distillation loss for one micro-batch."}
    )
    total: int = field(metadata={"help": "student_states + teacher_weights + gathered + loss_buffers."})
    fits: bool = field(
        metadata={"help": "Whether total is at most the GPU memory (activations not included)."}
    )
    cache_disk_bytes: int | None = field(
        default=None,
        metadata={"help": "offline_cache: the teacher cache on disk for cache_tokens tokens; else None."},
    )


@dataclass(frozen=True)
class MemoryPlan:
    """What `plan_distillation_memory` computed: the inputs it used and one `SetupPlan` per set-up."""

    teacher: str = field(metadata={"help": "The teacher as given (zoo name or path), or its model class."})
    student: str = field(metadata={"help": "The student as given (zoo name or path), or its model class."})
    teacher_parameters: int = field(metadata={"help": "Parameters of the teacher, tied counted once."})
    student_parameters: int = field(metadata={"help": "Parameters of the student, tied counted once."})
    vocab_size: int = field(metadata={"help": "Rows of both LM heads: the vocabulary the loss runs over."})
    gpus: int = field(metadata={"help": "Number of GPUs N the set-ups shard or replicate over."})
    gpu_memory_bytes: int = field(metadata={"help": "Memory of one GPU, the budget `fits` compares with."})
    tokens_per_gpu: int = field(metadata={"help": "Tokens of one micro-batch on one GPU."})
    chunk_size: int = field(metadata={"help": "Tokens per chunk of the fused loss."})
    top_k: int = field(metadata={"help": "Teacher ids kept per token in the offline cache."})
    cache_tokens: int | None = field(metadata={"help": "Training tokens the offline cache covers, if given."})
    cache_bytes_per_token: int = field(metadata={"help": "Disk bytes of the offline cache per token."})
    setups: tuple[SetupPlan, ...] = field(metadata={"help": "One row per set-up, in PLAN_SETUPS order."})

    def setup(self, name: str) -> SetupPlan:
        """The row of set-up ``name`` (``"replicated"``, ``"fsdp2"``, ``"zero3"`` or ``"offline_cache"``)."""
        for row in self.setups:
            if row.name == name:
                return row
        raise KeyError(f"No set-up named {name!r}. Set-ups: {[row.name for row in self.setups]}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, the set-ups as a list of dicts."""
        return asdict(self) | {"setups": [asdict(row) for row in self.setups]}


@dataclass(frozen=True)
class _Profile:
    """What the plan needs from one model, in parameters."""

    name: str
    count: ParameterCount
    vocab_size: int
    hidden_size: int
    largest_block: int
    outside_blocks: int
    untied_input_embedding: int
    largest_module: int


def _resolve(role: str, model_or_config: nn.Module | PretrainedConfig | str | PathLike) -> Any:
    """A zoo name becomes its config; anything that is neither a zoo name nor an existing path is an error."""
    if isinstance(model_or_config, (str, PathLike)) and (
        str(model_or_config) in MODEL_ZOO or not Path(model_or_config).exists()
    ):
        try:
            return zoo_config(str(model_or_config))
        except KeyError as error:
            raise ValueError(f"The {role} is neither a local path nor a zoo name. {error.args[0]}") from None
    return model_or_config


def _profile(role: str, model_or_config: nn.Module | PretrainedConfig | str | PathLike) -> _Profile:
    skeleton = meta_model(_resolve(role, model_or_config))
    head = skeleton.get_output_embeddings() if hasattr(skeleton, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"The {role} ({type(skeleton).__name__}) has no output embeddings: distillation over a vocabulary "
            "needs a language-model head. Pass a causal or seq2seq LM (e.g. its *ForCausalLM config)."
        )
    vocab_size, hidden_size = (int(size) for size in head.weight.shape)
    blocks = [block for stack in repeated_blocks(skeleton).values() for block in stack]
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    embedding = skeleton.get_input_embeddings()
    return _Profile(
        name=str(model_or_config)
        if isinstance(model_or_config, (str, PathLike))
        else type(skeleton).__name__,
        count=count_parameters(skeleton, method="full"),
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        largest_block=max((sum(p.numel() for p in block.parameters()) for block in blocks), default=0),
        # Embeddings, final norm, head...: FSDP2's root unit (all of the model when it has no blocks).
        outside_blocks=sum(p.numel() for p in skeleton.parameters() if id(p) not in in_blocks),
        untied_input_embedding=0 if embedding.weight is head.weight else embedding.weight.numel(),
        largest_module=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in skeleton.modules()),
    )


def cache_bytes_per_token(vocab_size: int, top_k: int) -> int:
    """Disk bytes per token of the offline teacher cache: ``top_k`` ids, ``top_k`` float16 log-probabilities
    and one float32 residual log-probability (the mass outside the k ids).

    Assumes `cache_teacher_logits`' layout with its default ``logprob_dtype="float16"``: ids in uint16 when the
    vocabulary has at most 65,536 ids, else int32. Arrow's per-row offsets and the per-row hash are left out
    (bytes per row, not per token).
    """
    return top_k * (_ID_BYTES[cache_id_dtype(vocab_size)] + 2) + _FP32


def cache_id_dtype(vocab_size: int) -> str:
    """The dtype of the offline cache's token ids: ``"uint16"`` up to 65,536 ids, else ``"int32"``."""
    return "uint16" if vocab_size <= _UINT16_IDS else "int32"


def _fused_loss_bytes(
    vocab_local: int, student_hidden: int, teacher_hidden: int, chunk: int, rows: int
) -> int:
    """Working memory of the fused objective on ``vocab_local`` head rows for ``rows`` tokens.

    Five float32 ``[chunk, vocab_local]`` buffers (the most `_divergence_and_grad` keeps live for one chunk:
    logits, log-probabilities, probabilities, logit gradient), one float32 ``[vocab_local, H_student]``
    head-gradient accumulator, and the ``[rows, H]`` bfloat16 tensors the objective holds: its copies of both
    models' hidden states (the kept tokens; all ranks' tokens when vocabulary-parallel) and the gradient of the
    student's. Assumes micro-batches longer than one chunk: the trainer sends shorter ones to the logits path.
    """
    chunk_buffers = (
        _FUSED_CHUNK_BUFFERS * min(chunk, rows) * vocab_local * _FP32
    )  # a chunk is at most the rows
    head_gradient = vocab_local * student_hidden * _FP32
    row_tensors = rows * (2 * student_hidden + teacher_hidden) * _BF16
    return chunk_buffers + head_gradient + row_tensors


def _sparse_loss_bytes(vocab_size: int, tokens: int) -> int:
    """Working memory of `sparse_distillation_loss`, the objective against a cached teacher: the student's
    ``[tokens, V]`` bfloat16 logits (the fused objective never holds them) and two float32 ``[tokens, V]``
    buffers at its forward peak (the upcast logits and the exponentials it keeps for backward)."""
    return tokens * vocab_size * (_BF16 + 2 * _FP32)


def _fsdp2_gathered(teacher: _Profile, student: _Profile) -> int:
    """Unsharded parameter bytes FSDP2 holds besides the shards.

    * The largest decoder block of the teacher and of the student, twice each: FSDP2 prefetches (all-gathers)
      the next block while the current one computes.
    * The teacher's parameters outside its blocks. `shard_teacher` gives an untied input embedding and LM head
      units of their own: the embedding is gathered only for its lookup and the head never (the fused
      objective bypasses it), so what is held is the larger of the embedding and the rest (final norm, other
      root parameters). A tied embedding/head sits in the root unit, gathered for the whole forward.
    * The student's parameters outside its blocks but its untied input embedding: accelerate keeps the unit of
      ``[final_norm, lm_head]`` and the root unsharded from forward to backward (``reshard_after_forward=False``);
      an untied input embedding is a unit of its own, resharded after forward.

    The teacher's and the student's block passes do not overlap, so adding both is an upper bound; the slack
    covers the student's unsharded block gradients awaiting reduce-scatter in backward, not counted separately.
    """
    teacher_outside = teacher.outside_blocks
    if teacher.untied_input_embedding:
        rest = (
            teacher.outside_blocks - teacher.untied_input_embedding - teacher.vocab_size * teacher.hidden_size
        )
        teacher_outside = max(teacher.untied_input_embedding, rest)
    teacher_part = 2 * teacher.largest_block + teacher_outside
    student_part = 2 * student.largest_block + student.outside_blocks - student.untied_input_embedding
    return _BF16 * (teacher_part + student_part)


def _zero3_gathered(teacher: _Profile, student: _Profile, vocab: int) -> int:
    """Bytes of parameters ZeRO-3 keeps gathered: at most ``stage3_max_live_parameters`` (DeepSpeed's default
    1e9, `STAGE3_MAX_LIVE_PARAMETERS`) in the parameter dtype, never more than the larger model (each engine,
    the teacher's and the student's, gathers in turn), and never less than the largest single module, which
    DeepSpeed gathers whole whatever the limit (a 70B Llama's embedding has 1.05e9 parameters), nor than the two
    LM heads the fused objective gathers together for its call."""
    live = min(STAGE3_MAX_LIVE_PARAMETERS, max(teacher.count.total, student.count.total))
    heads = vocab * (teacher.hidden_size + student.hidden_size)
    return _BF16 * max(live, teacher.largest_module, student.largest_module, heads)


MAX_GPUS, MAX_GPU_MEMORY_GIB, MAX_TOKENS = 1_000_000, 1_000_000, 2**40


def _check_positive_int(name: str, value: int, meaning: str, maximum: int = MAX_TOKENS) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1: it is {meaning}.")
    if value > maximum:
        raise ValueError(
            f"{name}={value} is beyond any real run (at most {maximum:,} here): it is {meaning}."
        )


def _check_arguments(
    gpus: int,
    gpu_memory_gib: float,
    tokens_per_gpu: int,
    chunk_size: int,
    cache_tokens: int | None,
    top_k: int,
) -> None:
    _check_positive_int(
        "gpus", gpus, "the number of GPUs the models are replicated or sharded over, e.g. 8", MAX_GPUS
    )
    if isinstance(gpu_memory_gib, bool) or not isinstance(gpu_memory_gib, (int, float)):
        raise ValueError(f"gpu_memory_gib={gpu_memory_gib!r} must be a number of GiB, e.g. 80.")
    if not math.isfinite(gpu_memory_gib) or not 0 < gpu_memory_gib <= MAX_GPU_MEMORY_GIB:
        raise ValueError(
            f"gpu_memory_gib={gpu_memory_gib} must be a positive, finite number of GiB (at most "
            f"{MAX_GPU_MEMORY_GIB:,}): the memory of one GPU "
            "that each set-up must fit in. Pass e.g. 80 for an 80 GB H100/A100, 24 for a 24 GB card."
        )
    _check_positive_int("tokens_per_gpu", tokens_per_gpu, "the number of tokens in one micro-batch per GPU")
    _check_positive_int("chunk_size", chunk_size, "the number of tokens per chunk of the fused loss")
    _check_positive_int("top_k", top_k, "the number of teacher ids the offline cache keeps per token")
    if cache_tokens is not None and (
        isinstance(cache_tokens, bool) or not isinstance(cache_tokens, int) or cache_tokens < 0
    ):
        raise ValueError(
            f"cache_tokens={cache_tokens!r} must be an int >= 0: the number of training tokens the offline "
            "teacher cache covers (or None to skip its disk size)."
        )


def plan_distillation_memory(
    teacher: nn.Module | PretrainedConfig | str | PathLike,
    student: nn.Module | PretrainedConfig | str | PathLike,
    *,
    gpus: int,
    gpu_memory_gib: float = 80.0,
    tokens_per_gpu: int = 4096,
    chunk_size: int | None = None,
    cache_tokens: int | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> MemoryPlan:
    """Per-GPU memory of distilling ``teacher`` into ``student`` on ``gpus`` GPUs, for each set-up.

    Both models are built on the meta device: nothing is downloaded or allocated. Activations are not included
    (see the module docstring for what each set-up counts).

    Args:
        teacher, student: a name from ``MODEL_ZOO`` (``"llama-3-70b"``), a ``PretrainedConfig``, a local path
            to a config, or a model. Both need an LM head over the same vocabulary.
        gpus: number of GPUs N.
        gpu_memory_gib: memory of one GPU in GiB; a set-up ``fits`` when its total is at most this.
        tokens_per_gpu: tokens per micro-batch on one GPU (the loss buffers grow with it).
        chunk_size: tokens per chunk of the fused loss (``DistillationTrainingArguments.fused_chunk_size``);
            None sizes it from the vocabulary, as the trainer does (`default_chunk_size`).
        cache_tokens: training tokens the offline teacher cache covers; gives ``cache_disk_bytes``.
        top_k: teacher ids kept per token in the offline cache.

    Returns:
        A `MemoryPlan`; ``plan.setup("fsdp2").total`` is the fsdp2 bytes per GPU.
    """
    big, small = _profile("teacher", teacher), _profile("student", student)
    if chunk_size is None:
        chunk_size = default_chunk_size(big.vocab_size, "cuda")
    _check_arguments(gpus, gpu_memory_gib, tokens_per_gpu, chunk_size, cache_tokens, top_k)
    if big.vocab_size != small.vocab_size:
        raise ValueError(
            f"The teacher's LM head has {big.vocab_size} vocabulary rows, the student's {small.vocab_size}: the "
            "distillation loss compares the two distributions token id by token id, so both need the same "
            "vocabulary. Pick a student built from the teacher's family and tokenizer (e.g. "
            "hf_enhance.student_from_teacher). If the rows differ only by embedding padding under one shared "
            "tokenizer (the trainer then distils on the shared columns), plan with a config whose vocab_size "
            "matches the other model's."
        )
    vocab = big.vocab_size
    if top_k > vocab:
        raise ValueError(
            f"top_k={top_k} exceeds the vocabulary of {vocab} ids: the cache keeps at most every id per token."
        )
    student_states = small.count.memory("bf16").total
    teacher_weights = big.count.memory("bf16").weights
    hidden = (small.hidden_size, big.hidden_size)
    per_token = cache_bytes_per_token(vocab, top_k)
    parts = {
        "replicated": (
            student_states,
            teacher_weights,
            0,
            _fused_loss_bytes(vocab, *hidden, chunk_size, tokens_per_gpu),
        ),
        "fsdp2": (
            math.ceil(student_states / gpus),
            math.ceil(teacher_weights / gpus),
            _fsdp2_gathered(big, small),
            _fused_loss_bytes(math.ceil(vocab / gpus), *hidden, chunk_size, gpus * tokens_per_gpu),
        ),
        "zero3": (
            math.ceil(student_states / gpus),
            math.ceil(teacher_weights / gpus),
            _zero3_gathered(big, small, vocab),
            _fused_loss_bytes(vocab, *hidden, chunk_size, tokens_per_gpu),
        ),
        "offline_cache": (student_states, 0, 0, _sparse_loss_bytes(vocab, tokens_per_gpu)),
    }
    budget = int(gpu_memory_gib * 2**30)
    setups = tuple(
        SetupPlan(
            name,
            *values,
            total=sum(values),
            fits=sum(values) <= budget,
            cache_disk_bytes=(
                cache_tokens * per_token if name == "offline_cache" and cache_tokens is not None else None
            ),
        )
        for name, values in parts.items()
    )
    return MemoryPlan(
        teacher=big.name,
        student=small.name,
        teacher_parameters=big.count.total,
        student_parameters=small.count.total,
        vocab_size=vocab,
        gpus=gpus,
        gpu_memory_bytes=budget,
        tokens_per_gpu=tokens_per_gpu,
        chunk_size=chunk_size,
        top_k=top_k,
        cache_tokens=cache_tokens,
        cache_bytes_per_token=per_token,
        setups=setups,
    )
