"""Fingerprints of a teacher: what a cache of its outputs records, so that no other teacher's outputs are read as its.

`teacher_fingerprint` gives the model class, a digest of its config, a cheap digest of its weights and their dtype.
`fingerprint_differences` names what differs between two fingerprints, for the messages that refuse a cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from hf_enhance.modeling import unwrap

__all__ = ["fingerprint_differences", "teacher_fingerprint", "tokenizer_digest", "weights_digest"]

_SAMPLED_VALUES = 64  # per tensor, hashed exactly; a float64 sum covers every value


def weights_digest(model: nn.Module) -> str:
    """A cheap fingerprint of ``model``'s weights: every tensor's name, shape and dtype, its float64 sum and the
    exact bytes of evenly spaced values. Any retraining or reload of other weights changes it."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if tensor.is_meta or tensor.numel() == 0:
                continue
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _SAMPLED_VALUES)].cpu().contiguous()
            digest.update(sample.view(torch.uint8).numpy().tobytes())
            digest.update(repr(flat.sum(dtype=torch.float64).item()).encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer's vocabulary, special tokens and chat template, hashed."""
    parts = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted(getattr(tokenizer, "all_special_tokens", [])),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _config_digest(model: nn.Module) -> str | None:
    """The model config's values that decide its function (names, paths and the dtype left out), hashed."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    values = {
        key: value
        for key, value in config.to_dict().items()
        if key not in ("_name_or_path", "name_or_path", "dtype", "torch_dtype", "transformers_version")
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def teacher_fingerprint(teacher: nn.Module) -> dict[str, Any]:
    """The teacher's class, config digest, weights digest and weights dtype, as plain JSON values."""
    base = unwrap(teacher)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in base.parameters() if p.is_floating_point()})
    return {
        "class": type(base).__name__,
        "config": _config_digest(base),
        "weights": weights_digest(base),
        "dtype": ",".join(dtypes),
    }


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two teacher fingerprints (``"weights"``, ``"dtype"``, ...), in a stable order."""
    return [key for key in ("class", "config", "weights", "dtype") if recorded.get(key) != current.get(key)]
