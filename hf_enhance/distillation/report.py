"""Teacher versus student on held-out prompts: likelihood scores and what each model actually writes.

Held-out perplexity alone can hide large gaps in generated text: a student may assign the teacher's text a fair
likelihood and still write answers the teacher finds unlikely. `teacher_student_report` measures both sides on
the same held-out prompt/completion rows:

- ``perplexity``: exp of the mean negative log-likelihood per completion token of the rows' completions;
- ``top1_agreement``: share of those completion positions where the student's most likely next token is the
  teacher's;
- ``teacher_nll_of_own_answers``: each model samples answers to the held-out prompts (same seed and settings
  for both) and the teacher scores them: its mean NLL per generated token (lower = text the teacher finds more
  likely; the teacher's own answers give the reference);
- ``parameters``, ``answer_length`` (mean generated tokens per answer) and ``tokens_per_second`` (generated
  tokens over generation wall time, same batches for both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_enhance.distillation.terms.on_policy import (
    PromptCompletionCollator,
    completion_batch,
    generation_mode,
    sample_completions,
)
from hf_enhance.files import write_json_atomically

__all__ = ["ModelReport", "TeacherStudentReport", "teacher_student_report"]

REPORT_NAME = "teacher_student_report"
_SCORED_KEYS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class ModelReport:
    """One model's side of the report (see the module docstring for each measure)."""

    parameters: int
    perplexity: float
    teacher_nll_of_own_answers: float
    answer_length: float
    tokens_per_second: float


@dataclass
class TeacherStudentReport:
    """The teacher's and the student's measures on the same held-out rows, and the settings used."""

    teacher: ModelReport
    student: ModelReport
    top1_agreement: float
    held_out_rows: int
    completion_tokens: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write ``teacher_student_report.json`` and ``teacher_student_report.png``; returns both paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        json_path, png_path = output / f"{REPORT_NAME}.json", output / f"{REPORT_NAME}.png"
        write_json_atomically(json_path, self.to_dict())
        panels = (
            ("perplexity", "held-out perplexity"),
            ("teacher_nll_of_own_answers", "teacher NLL of own answers\n(nats/token)"),
            ("tokens_per_second", "generated tokens / s"),
        )
        figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
        for axis, (key, title) in zip(axes, panels, strict=True):
            values = [getattr(self.teacher, key), getattr(self.student, key)]
            bars = axis.bar(["teacher", "student"], values, color=["#4c72b0", "#dd8452"])
            axis.bar_label(bars, fmt="%.3g")
            axis.set_title(title, fontsize=9)
        ratio = self.student.parameters / self.teacher.parameters
        figure.suptitle(
            f"student {ratio:.2f}x the teacher's parameters, top-1 agreement {self.top1_agreement:.1%}",
            fontsize=10,
        )
        figure.tight_layout()
        figure.savefig(png_path, dpi=120)
        plt.close(figure)
        return json_path, png_path


def teacher_student_report(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 1234,
    output_dir: str | Path | None = None,
) -> TeacherStudentReport:
    """Compare ``student`` with ``teacher`` on held-out prompt/completion ``rows``; optionally save JSON + plot.

    Args:
        teacher, student: causal LMs sharing ``tokenizer`` (each used on the device its weights are on).
        rows: held-out rows with ``prompt`` and ``completion`` text or chat ``messages``, as for
            `PromptCompletionCollator` (e.g. a `datasets.Dataset`); the completions are scored for perplexity and
            agreement, the prompts are answered by both models.
        max_new_tokens, temperature, top_p: sampling of the answers (temperature 0: greedy), the same for both.
        batch_size: rows per forward / generate call.
        seed: seeds the sampling, so both models answer with the same random stream.
        output_dir: when given, ``teacher_student_report.json`` and ``.png`` are written there.
    """
    rows = list(rows)
    if not rows:
        raise ValueError(
            "rows is empty: the report needs held-out prompt/completion rows to compare the models on."
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1: the length of each answer.")
    collator = PromptCompletionCollator(tokenizer)
    batches = [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    with generation_mode(teacher), generation_mode(student):
        nll = {"teacher": 0.0, "student": 0.0}
        agree, tokens = 0, 0
        for batch in batches:
            labels = batch["labels"][:, 1:]
            mask = labels != -100
            scores = {}
            for name, model in (("teacher", teacher), ("student", student)):
                logits = _logits(model, batch)[:, :-1]
                scores[name] = logits[mask]
                nll[name] += F.cross_entropy(
                    scores[name], labels[mask].to(logits.device), reduction="sum"
                ).item()
            columns = min(scores["teacher"].shape[-1], scores["student"].shape[-1])
            teacher_top = scores["teacher"][:, :columns].argmax(-1).cpu()
            agree += int((scores["student"][:, :columns].argmax(-1).cpu() == teacher_top).sum())
            tokens += int(mask.sum())
        if tokens == 0:
            raise ValueError(
                "The rows' completions have no tokens to score: give each row a non-empty completion."
            )
        sides = {
            name: ModelReport(
                parameters=sum(p.numel() for p in model.parameters()),
                perplexity=math.exp(nll[name] / tokens),
                **_answers(model, teacher, tokenizer, batches, collator.pad_token_id, settings),
            )
            for name, model in (("teacher", teacher), ("student", student))
        }
    report = TeacherStudentReport(
        teacher=sides["teacher"],
        student=sides["student"],
        top1_agreement=agree / tokens,
        held_out_rows=len(rows),
        completion_tokens=tokens,
        settings=settings,
    )
    if output_dir is not None:
        report.save(output_dir)
    return report


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    device = _device(model)
    return model(**{key: batch[key].to(device) for key in _SCORED_KEYS}).logits.float()


def _answers(
    model: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    batches: list[dict[str, torch.Tensor]],
    pad_token_id: int,
    settings: dict[str, Any],
) -> dict[str, float]:
    """``model`` answers every batch's prompts; the teacher's mean NLL per generated token, length and speed."""
    nll, generated, answers, seconds = 0.0, 0, 0, 0.0
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(settings["seed"])
        outputs = []
        for batch in batches:
            began = time.perf_counter()
            completion = sample_completions(
                model, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                top_p=settings["top_p"], top_k=0, pad_token_id=pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            outputs.append(completion)
            seconds += time.perf_counter() - began
    for batch, completion in zip(batches, outputs, strict=True):
        prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        scored = completion_batch(prompt_ids, prompt_mask, completion, torch.ones_like(completion),
                                  tokenizer.eos_token_id, pad_token_id)  # fmt: skip
        labels = scored["labels"][:, 1:]
        mask = labels != -100
        logits = _logits(teacher, scored)[:, :-1]
        nll += F.cross_entropy(logits[mask], labels[mask].to(logits.device), reduction="sum").item()
        generated += int(mask.sum())
        answers += len(completion)
    return {
        "teacher_nll_of_own_answers": nll / max(generated, 1),
        "answer_length": generated / answers,
        "tokens_per_second": generated / max(seconds, 1e-9),
    }
