"""Sequence-level distillation data: text sampled from the teacher once, cached on disk (Kim & Rush, 2016).

Training a student on the teacher's own samples transfers the teacher's sequence distribution even where no
corpus is at hand; with `DistillationTrainer` the token-level term is added on top. Sampling a large teacher is
the slow part, so `generate_teacher_texts` keys a JSON cache on the teacher's weights, tokenizer, prompts, sampling
settings, seed and library versions: the next run with the same inputs reads the file (and says so) instead of
generating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

import hf_enhance
from hf_enhance.distillation.sources.fingerprint import tokenizer_digest, weights_digest
from hf_enhance.files import write_json_atomically

__all__ = ["generate_teacher_texts", "teacher_texts_cache_file"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 2


def _settings(
    teacher: nn.Module, tokenizer: Any, prompts: Sequence[str], generation: dict[str, Any]
) -> dict[str, Any]:
    """Everything the generated texts depend on (the cache key), as plain JSON values (as read back from the
    cache file, so a reread key compares equal)."""
    import transformers

    config = getattr(teacher, "config", None)
    generation_config = getattr(teacher, "generation_config", None)
    settings = {
        "format": _CACHE_FORMAT,
        "teacher": {
            "class": type(teacher).__name__,
            "model_name": str(getattr(config, "_name_or_path", "")),
            "weights": weights_digest(teacher),
            "generation_config": generation_config.to_diff_dict() if generation_config is not None else None,
            "device": next(teacher.parameters()).device.type,
        },
        "tokenizer": {
            "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
            "digest": tokenizer_digest(tokenizer),
        },
        "prompts": list(prompts),
        "generation": generation,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "hf_enhance": hf_enhance.__version__,
        },
    }
    return json.loads(json.dumps(settings, default=str))


def teacher_texts_cache_file(cache_dir: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """The cache file for one set of generation inputs: ``<cache_dir>/teacher_texts/<sha256 prefix>.json``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / "teacher_texts" / f"{digest}.json"


def _check(
    prompts: Sequence[str], samples_per_prompt: int, max_new_tokens: int, temperature: float, top_p: float
) -> None:
    if isinstance(prompts, str) or not prompts:
        raise ValueError(
            "prompts must be a non-empty list of strings (got "
            f"{'a single string' if isinstance(prompts, str) else 'an empty list'}). Pass e.g. "
            "['Write a story about a fox.', 'Explain how tides work.']."
        )
    if samples_per_prompt < 1 or max_new_tokens < 1:
        raise ValueError(
            f"samples_per_prompt={samples_per_prompt} and max_new_tokens={max_new_tokens} must both be >= 1."
        )
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"temperature={temperature} must be >= 0 (0 = greedy decoding) and top_p={top_p} in (0, 1]."
        )
    if temperature == 0 and samples_per_prompt > 1:
        raise ValueError(
            f"temperature=0 decodes greedily, so the {samples_per_prompt} samples per prompt would be identical. "
            "Use samples_per_prompt=1, or a temperature > 0 to sample."
        )


def _encode(tokenizer: Any, prompts: Sequence[str], chat_template: bool) -> list[list[int]]:
    if chat_template:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            for prompt in prompts
        ]
        encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    else:
        encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    empty = [repr(prompt) for prompt, ids in zip(prompts, encoded, strict=True) if not ids]
    if empty:
        raise ValueError(
            f"{len(empty)} prompt(s) tokenize to no tokens ({', '.join(empty[:3])}); generation needs at least "
            "one token to continue. Remove empty prompts."
        )
    return encoded


@torch.no_grad()
def _sample(
    teacher: nn.Module,
    prompt_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    generation: dict[str, Any],
    tokenizer: Any,
    show_progress: bool,
) -> list[str]:
    """Left-pad each batch of prompts, sample continuations, decode only the new tokens."""
    device = next(teacher.parameters()).device
    texts: list[str] = []
    bar = tqdm(total=len(prompt_ids), desc="Sampling teacher text", unit="seq", disable=not show_progress)
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device
        )
        output = teacher.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=generation["temperature"] > 0,
            temperature=generation["temperature"] or None,
            top_p=generation["top_p"] if generation["temperature"] > 0 else None,
            max_new_tokens=generation["max_new_tokens"],
            pad_token_id=pad_id,
        )
        texts.extend(
            text.strip() for text in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        )
        bar.update(len(batch))
    bar.close()
    return texts


def generate_teacher_texts(
    teacher: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    chat_template: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    show_progress: bool = True,
) -> Dataset:
    """Sample ``samples_per_prompt`` continuations of each prompt from ``teacher``; cache them under ``cache_dir``.

    Args:
        teacher: a model with ``generate`` (a transformers causal LM), on the device it should run on.
        tokenizer: the teacher's tokenizer; it is not modified.
        prompts: the prompts to continue.
        samples_per_prompt: continuations per prompt (different samples of the same prompt).
        max_new_tokens: length limit of each continuation; generation also stops at the EOS token.
        temperature: sampling temperature; 1.0 samples the teacher's own distribution, 0 decodes greedily.
        top_p: nucleus sampling threshold (1.0: off). Other settings come from ``teacher.generation_config``.
        batch_size: sequences generated together.
        seed: seeds the sampling (the global RNG state is restored afterwards).
        chat_template: wrap each prompt as a user turn of the tokenizer's chat template. None: when the
            tokenizer has one.
        cache_dir: directory for the cache (``<cache_dir>/teacher_texts/<key>.json``); None: no cache.
        refresh: generate again even when a cache file exists, and overwrite it.
        show_progress: show a tqdm progress bar while sampling.

    Returns:
        A `datasets.Dataset` with columns ``prompt`` and ``text`` (the continuation, special tokens removed),
        ``samples_per_prompt`` consecutive rows per prompt.

    The cache key covers everything that decides the texts: the teacher's weights (a fingerprint of every
    tensor's name, shape, dtype, sum and sampled values), its generation config and device type, the tokenizer
    (vocabulary, special tokens, chat template), the prompts, the sampling settings and seed, and the torch,
    transformers and hf_enhance versions. A reused file is announced in one INFO log line naming it.
    """
    _check(prompts, samples_per_prompt, max_new_tokens, temperature, top_p)
    if chat_template is None:
        chat_template = bool(getattr(tokenizer, "chat_template", None))
    elif chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat_template=True but the tokenizer has no chat template. Pass chat_template=False to continue the "
            "raw prompts, or use the tokenizer of an instruction-tuned teacher."
        )
    generation = {
        "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "chat_template": chat_template,
    }
    settings = _settings(teacher, tokenizer, prompts, generation)
    cache_file = None if cache_dir is None else teacher_texts_cache_file(cache_dir, settings)
    if cache_file is not None and cache_file.exists() and not refresh:
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            cached = None
            logger.warning("Cache file %s is damaged (an interrupted write); generating again.", cache_file)
        if isinstance(cached, dict) and cached.get("settings") == settings:
            logger.info(
                "Reusing %d teacher texts cached in %s (same teacher weights, tokenizer, prompts, generation "
                "settings, seed and library versions); delete that file or pass refresh=True to sample them again.",
                len(cached["records"]),
                cache_file,
            )
            return Dataset.from_list(cached["records"])
        if cached is not None:
            logger.warning("Cache file %s was written for other settings; generating again.", cache_file)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(
            "The tokenizer has neither a pad nor an EOS token, so batches of prompts cannot be padded. Set "
            "tokenizer.pad_token (e.g. to an existing special token) first."
        )
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    prompt_ids = _encode(tokenizer, repeated, chat_template)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            texts = _sample(teacher, prompt_ids, pad_id, batch_size, generation, tokenizer, show_progress)
    finally:
        teacher.train(was_training)
    records = [{"prompt": prompt, "text": text} for prompt, text in zip(repeated, texts, strict=True)]
    if cache_file is not None:
        write_json_atomically(cache_file, {"settings": settings, "records": records}, indent=1)
        logger.info("Wrote %d teacher texts to %s", len(records), cache_file)
    return Dataset.from_list(records)
