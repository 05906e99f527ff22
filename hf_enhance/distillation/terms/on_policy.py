"""On-policy and mixed distillation (GKD, Agarwal et al. 2024): the student learns on completions it samples.

Batches come from `PromptCompletionCollator`: each row is a prompt, left-padded, followed by a completion, so a
generated completion can replace the dataset's one in place. At every optimizer step, with probability
``lmbda`` (drawn from the seed and the step, so every process agrees), the student samples the completions of all
that step's micro-batches (on-policy); otherwise, with ``seq_kd``, the teacher samples them, else the dataset's
completions are used (off-policy). Teacher and student then score the very same token ids with the usual
objective; prompt tokens, padding and everything after a generated EOS are masked from every loss term, and the
token count that normalises the step counts completion tokens only.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from hf_enhance.distillation.placement.fsdp2 import is_sharded
from hf_enhance.distillation.sources.cache_batches import CACHE_BATCH_KEYS
from hf_enhance.distillation.terms.prompts import (
    PROMPT_KEYS,
    TEXT_COLUMNS,
    PromptCompletionCollator,
    completion_batch,
    padding_id,
    stop_token_ids,
)
from hf_enhance.modeling import max_positions

if TYPE_CHECKING:
    from hf_enhance.distillation.arguments import DistillationTrainingArguments

logger = logging.getLogger(__name__)


__all__ = [
    "ON_POLICY_KEY",
    "PROMPT_KEYS",
    "TEXT_COLUMNS",
    "OnPolicySampler",
    "PromptCompletionCollator",
    "completion_batch",
]

# Batch key of a generated batch's flag: True for the student's own samples, False for the teacher's (seq_kd).
ON_POLICY_KEY = "on_policy"


@contextmanager
def generation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no gradients and gradient checkpointing off for ``generate``; all restored afterwards."""
    was_training = model.training
    # transformers 5.x renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing.
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    if checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if checkpointing:
            model.gradient_checkpointing_enable()


def sample_completions(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
    logits_processor: LogitsProcessorList | None = None,
) -> torch.Tensor:
    """``[B, <= max_new_tokens]`` ids ``model`` samples after the left-padded prompts (temperature 0: greedy).

    ``eos_token_id``: generation stops at any of these ids (`stop_token_ids`; it replaces the generation
    config's). ``top_k`` 0 and ``top_p`` 1 switch those filters off, whatever the model's generation config says.
    Call it inside `generation_mode`; the ids come back on the prompts' device.
    """
    sample = temperature > 0
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=prompt_ids.to(device),
        attention_mask=prompt_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=top_k if sample else None,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id
        if eos_token_id is None or isinstance(eos_token_id, int)
        else list(eos_token_id),
        logits_processor=logits_processor,
        # FSDP2 sharding (ours or accelerate's) is not what transformers detects: keep every rank stepping until
        # all are done, since each forward gathers weights collectively. None lets transformers decide otherwise.
        synced_gpus=True
        if is_sharded(model) and dist.is_initialized() and dist.get_world_size() > 1
        else None,
    )
    return output[:, prompt_ids.shape[1] :].to(prompt_ids.device)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Within the block, torch's random stream (CPU and ``device``) starts from ``seed``; restored afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        yield


class EntropyMeter(LogitsProcessor):
    """Records, at each generation step, the entropy (nats) of the distribution each row samples from.

    Placed after ``generate``'s own processors, it sees the scores the token is drawn from: the model's raw
    distribution at the default sampling settings (temperature 1, no top-p or top-k).
    """

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(torch.special.entr(torch.softmax(scores.float(), dim=-1)).sum(-1))
        return scores

    def per_token(self, mask: torch.Tensor) -> list[float]:
        """Each row's mean entropy over its generated tokens (``mask``: ``[B, steps]``, True up to the stop)."""
        entropy = torch.stack(self.steps, dim=1).to(mask.device)
        return ((entropy * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


class OnPolicySampler:
    """Replaces an optimizer step's completions by the student's (on-policy) or the teacher's (``seq_kd``) samples.

    A component of `DistillationTrainer` (built when ``lmbda > 0`` or ``seq_kd``). Each generated batch carries
    its own ``on_policy`` flag (`ON_POLICY_KEY`), which the trainer reads from the batch. Generation stops at every
    stop id of the run (`stop_token_ids` of the tokenizer, the student and the teacher), and labels end there.
    The share of on-policy steps follows ``lmbda_schedule`` (`lmbda_at`) inside the one run, so the optimizer and
    the learning-rate schedule carry on.

    Args:
        args: the run's `DistillationTrainingArguments` (lmbda and its schedule, seq_kd, the generation settings,
            the seed).
        student: the student (its generation config's EOS ids stop generation too).
        teacher: the placed teacher, or None (a cache only: refused, nothing would grade generated text).
        tokenizer: the tokenizer both models share (padding and the tokenizer's EOS and end of turn).
        task: the distillation task (a causal LM is needed).
        train_dataset: checked for prompt columns when it has column names.
        autocast: the run's autocast context (generation runs under it, as the forwards do).
    """

    def __init__(
        self,
        args: DistillationTrainingArguments,
        student: nn.Module,
        teacher: nn.Module | None,
        tokenizer: Any,
        task: str | None,
        train_dataset: Any,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        what = f"lmbda={args.lmbda} / seq_kd={args.seq_kd}"
        if teacher is None:
            raise ValueError(
                f"{what} need a live teacher to grade (or write) completions generated during training, but the "
                "trainer has only a teacher_cache. Pass teacher_model= as well, or set lmbda=0 and seq_kd=False."
            )
        if task not in ("causal_lm", None):
            raise ValueError(
                f"{what} generate completions, which needs a causal LM student; this student is a {task} model. "
                "Set lmbda=0 and seq_kd=False."
            )
        if (
            getattr(tokenizer, "eos_token_id", None) is None
            and getattr(tokenizer, "pad_token_id", None) is None
        ):
            raise ValueError(
                f"{what} generate text, which needs the tokenizer (its padding and end-of-turn tokens), but "
                f"processing_class is {type(tokenizer).__name__}. Pass processing_class=tokenizer to the trainer."
            )
        columns = getattr(train_dataset, "column_names", None)
        if columns is not None and not (
            {"prompt", "messages"} & set(columns) or "prompt_input_ids" in columns
        ):
            raise ValueError(
                f"{what} generate completions for the dataset's prompts, but the training set has no 'prompt' "
                f"(with 'completion') or 'messages' column (columns: {columns}). Build prompt/completion rows and "
                "collate them with PromptCompletionCollator."
            )
        if args.lmbda > 0 and (args.distillation_loss == "forward_kl" or args.temperature != 1.0):
            logger.warning(
                "On-policy steps (lmbda=%s) grade the student's own samples with %s at temperature %s. The "
                "on-policy objective is the reverse KL at T = 1 (distillation_loss='reverse_kl', temperature=1.0): "
                "it is what on-policy distillation lowers; forward KL and T != 1 apply the off-policy defaults.",
                args.lmbda,
                args.distillation_loss,
                args.temperature,
            )
        self.args = args
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.autocast = autocast
        self.stop_ids = stop_token_ids(tokenizer, student, teacher)
        self.positions = {"student": max_positions(student), "teacher": max_positions(teacher)}
        self._logs: dict[str, list[float]] = {
            "on_policy": [],
            "completion_length": [],
            "eos_rate": [],
            "student_entropy": [],
            "seconds": [],
        }

    def lmbda_at(self, step: int) -> float:
        """The on-policy probability at optimizer step ``step``: ``lmbda`` (constant), ramped from 0 over
        ``lmbda_steps`` steps (linear), or 0 before step ``lmbda_steps`` and ``lmbda`` from it (switch)."""
        args = self.args
        if args.lmbda_schedule == "switch":
            return args.lmbda if step >= args.lmbda_steps else 0.0
        if args.lmbda_schedule == "linear" and args.lmbda_steps > 0:
            return args.lmbda * min(1.0, step / args.lmbda_steps)
        return args.lmbda

    def is_on_policy_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` is on-policy: the same draw on every process (seed and step)."""
        lmbda = self.lmbda_at(step)
        if lmbda >= 1.0:
            return True
        return random.Random(f"{self.args.seed}:{step}").random() < lmbda

    def swap(
        self,
        batches: list[Any],
        step: int,
        student: nn.Module,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[Any] | None:
        """The step's micro-batches with generated completions, or None when this step keeps the dataset's.

        ``gather`` (the accelerator's, with several processes) collects every process's longest prompt first, so
        prompts too long for the models are refused on every rank together, not on one while the others wait in
        a collective.
        """
        on_policy = self.is_on_policy_step(step)
        if not on_policy and not self.args.seq_kd:
            self._logs["on_policy"].append(0.0)
            return None
        missing = [key for key in PROMPT_KEYS if key not in batches[0]]
        if missing:
            raise ValueError(
                f"The batch has no {missing}: on-policy distillation and seq_kd need the prompts alone for "
                "generation. Collate prompt/completion rows with hf_enhance.PromptCompletionCollator."
            )
        longest = max(int(batch["prompt_input_ids"].shape[1]) for batch in batches)
        if gather is not None:
            mine = torch.tensor([longest], device=batches[0]["prompt_input_ids"].device)
            longest = int(gather(mine).max())
        self.check_length(longest)
        generator = student if on_policy else self.teacher
        began = time.perf_counter()
        batches = [
            self.generate(generator, batch, measure_entropy=on_policy, seed=self.sampling_seed(step, index))
            for index, batch in enumerate(batches)
        ]
        self._logs["seconds"].append(time.perf_counter() - began)
        self._logs["on_policy"].append(float(on_policy))
        for batch in batches:
            batch[ON_POLICY_KEY] = on_policy
        return batches

    def check_length(self, prompt_length: int) -> None:
        """Refuse prompts that, with ``max_new_tokens`` generated tokens, outgrow a model's positions."""
        needed = prompt_length + self.args.max_new_tokens
        for role, limit in self.positions.items():
            if limit is not None and needed > limit:
                raise ValueError(
                    f"A batch's prompts are {prompt_length} tokens long and max_new_tokens={self.args.max_new_tokens}"
                    f": {needed} positions, but the {role} takes at most {limit}. Cut the prompts "
                    f"(PromptCompletionCollator(tokenizer, max_prompt_length={max(limit - self.args.max_new_tokens, 1)}"
                    ")) or lower max_new_tokens."
                )

    def sampling_seed(self, step: int, micro_batch: int) -> int:
        """The seed of one micro-batch's sampling: from the run's seed, the optimizer step, the micro-batch and the
        process, so a run resumed from any checkpoint samples what the straight run sampled."""
        key = f"{self.args.seed}:{step}:{micro_batch}:{self.args.process_index}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def generate(
        self, model: nn.Module, batch: dict[str, Any], measure_entropy: bool = False, seed: int | None = None
    ) -> dict[str, Any]:
        """``batch`` with its completions replaced by ``model``'s samples (labels on the completions only, up to
        and with the first stop id). Logs their length, whether they stopped, and (``measure_entropy``) the
        entropy ``model`` sampled them from. With ``seed``, sampling draws from that seed and leaves the global
        random state as it was."""
        prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        pad_id = padding_id(self.tokenizer)
        args = self.args
        self.check_length(prompt_ids.shape[1])
        meter = EntropyMeter() if measure_entropy else None
        device = next(model.parameters()).device
        with generation_mode(model), self.autocast(), _seeded(seed, device):
            completion = sample_completions(
                model, prompt_ids, prompt_mask, max_new_tokens=args.max_new_tokens,
                temperature=args.generation_temperature, top_p=args.generation_top_p, top_k=args.generation_top_k,
                pad_token_id=pad_id, eos_token_id=self.stop_ids,
                logits_processor=None if meter is None else LogitsProcessorList([meter]),
            )  # fmt: skip
        generated = completion_batch(
            prompt_ids, prompt_mask, completion, torch.ones_like(completion), self.stop_ids, pad_id
        )
        kept_tokens = generated["labels"][:, prompt_ids.shape[1] :] != -100
        self._logs["completion_length"].extend(kept_tokens.sum(1).float().tolist())
        stopped = torch.isin(completion, torch.tensor(self.stop_ids, device=completion.device)).any(1)
        self._logs["eos_rate"].extend(stopped.float().tolist())
        if meter is not None:
            self._logs["student_entropy"].extend(meter.per_token(kept_tokens))
        # The dataset's teacher-cache entries describe its completion, not this one: the live teacher grades it.
        kept = {k: v for k, v in batch.items() if k not in generated and k not in CACHE_BATCH_KEYS}
        return {**kept, **generated}

    def log_entries(self) -> dict[str, float]:
        """Means since the last log: on-policy fraction, completion length, share of completions that stopped (at a
        stop id, within max_new_tokens), the student's entropy per generated token on on-policy steps (nats), and
        generation seconds per step."""
        logs = self._logs
        entries = {}
        if logs["on_policy"]:
            entries["on_policy_fraction"] = sum(logs["on_policy"]) / len(logs["on_policy"])
        for name in ("completion_length", "eos_rate", "student_entropy"):
            if logs[name]:
                entries[name] = sum(logs[name]) / len(logs[name])
        if logs["seconds"]:
            entries["generation_seconds"] = sum(logs["seconds"]) / len(logs["on_policy"])
        for values in logs.values():
            values.clear()
        return {name: round(value, 4) for name, value in entries.items()}
