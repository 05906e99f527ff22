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
- ``entropy_of_own_answers`` and ``reverse_kl_of_own_answers``: per generated token of those answers, the model's
  own entropy and KL(model ‖ teacher) over the full vocabulary (T = 1). At temperature 1 the teacher's NLL above
  is, in expectation, their sum: a sharper student lowers it without coming closer to the teacher, while the
  reverse KL measures only the distance (0 for the teacher);
- ``draft_acceptance``: the student as a draft model for the teacher in greedy speculative decoding, on the first
  ``draft_rows`` rows: the share of the teacher's greedy answer tokens the student predicts greedily from the same
  prefix (the per-token acceptance rate); ``assisted``: the teacher's greedy generation on those rows alone and
  with ``assistant_model=student``, timed, and whether the two outputs are identical (they must be);
- ``parameters``, ``answer_length`` (mean generated tokens per answer) and ``tokens_per_second`` (generated
  tokens over generation wall time, same batches for both).

`grade_own_answers` gives one model's side alone (its own answers graded by the teacher), for comparing many
students with one teacher.

Answers stop at any of the run's stop ids (`stop_token_ids`: both models' generation-config EOS ids, the
tokenizer's EOS and the chat template's end of turn).
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

from hf_enhance.distillation.terms.on_policy import generation_mode, sample_completions
from hf_enhance.distillation.terms.prompts import PromptCompletionCollator, completion_batch, stop_token_ids
from hf_enhance.files import write_json_atomically

__all__ = ["ModelReport", "TeacherStudentReport", "grade_own_answers", "teacher_student_report"]

REPORT_NAME = "teacher_student_report"
_SCORED_KEYS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class ModelReport:
    """One model's side of the report (see the module docstring for each measure)."""

    parameters: int
    perplexity: float
    teacher_nll_of_own_answers: float
    entropy_of_own_answers: float
    reverse_kl_of_own_answers: float
    answer_length: float
    tokens_per_second: float


@dataclass
class TeacherStudentReport:
    """The teacher's and the student's measures on the same held-out rows, and the settings used."""

    teacher: ModelReport
    student: ModelReport
    top1_agreement: float
    draft_acceptance: float | None
    assisted: dict[str, Any]
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
            ("perplexity", "perplexity on the held-out\nreport rows' completions"),
            ("teacher_nll_of_own_answers", "teacher NLL of own answers\n(nats/token)"),
            ("reverse_kl_of_own_answers", "KL(model || teacher)\non own answers (nats/token)"),
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
            f"student {ratio:.2f}x the teacher's parameters, top-1 agreement {self.top1_agreement:.1%}"
            + ("" if self.draft_acceptance is None else f", draft acceptance {self.draft_acceptance:.1%}"),
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
    draft_rows: int = 8,
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
        draft_rows: the first rows on which the student is measured as a draft model (acceptance rate, assisted
            generation timed against the teacher alone), one at a time as assisted generation runs; 0 skips it.
        output_dir: when given, ``teacher_student_report.json`` and ``.png`` are written there.
    """
    batches, settings = _prepared(tokenizer, rows, (teacher, student), max_new_tokens, temperature, top_p,
                                  batch_size, seed, draft_rows)  # fmt: skip
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
                **_answers(model, teacher, batches, settings),
            )
            for name, model in (("teacher", teacher), ("student", student))
        }
        acceptance, assisted = _as_draft(teacher, student, batches, settings, draft_rows)
    report = TeacherStudentReport(
        teacher=sides["teacher"],
        student=sides["student"],
        top1_agreement=agree / tokens,
        draft_acceptance=acceptance,
        assisted=assisted,
        held_out_rows=sum(len(batch["labels"]) for batch in batches),
        completion_tokens=tokens,
        settings={**settings, "draft_rows": draft_rows},
    )
    if output_dir is not None:
        report.save(output_dir)
    return report


def grade_own_answers(
    model: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 1234,
) -> dict[str, float]:
    """``model`` answers the prompts of ``rows`` and ``teacher`` grades every generated token: one side of
    `teacher_student_report`, without the teacher's own answers or the draft measurements (for comparing many
    students with one teacher).

    Returns per generated token ``teacher_nll_of_own_answers``, ``entropy_of_own_answers`` and
    ``reverse_kl_of_own_answers`` (KL(model ‖ teacher), full vocabulary, T = 1), and ``answer_length`` and
    ``tokens_per_second``; the settings mean what they mean in `teacher_student_report`.
    """
    batches, settings = _prepared(tokenizer, rows, (teacher, model), max_new_tokens, temperature, top_p,
                                  batch_size, seed, 0)  # fmt: skip
    with generation_mode(teacher), generation_mode(model):
        return _answers(model, teacher, batches, settings)


def _prepared(
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    models: tuple[nn.Module, nn.Module],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    draft_rows: int,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The rows collated into batches, and the generation settings every answer is sampled with."""
    rows = list(rows)
    if not rows:
        raise ValueError(
            "rows is empty: the report needs held-out prompt/completion rows to compare the models on."
        )
    _check_settings(max_new_tokens, temperature, top_p, batch_size, draft_rows)
    collator = PromptCompletionCollator(tokenizer)
    batches = [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    settings = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stop_ids": stop_token_ids(tokenizer, *models),
        "pad_token_id": collator.pad_token_id,
    }
    return batches, settings


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    device = _device(model)
    return model(**{key: batch[key].to(device) for key in _SCORED_KEYS}).logits.float()


def _check_settings(
    max_new_tokens: int, temperature: float, top_p: float, batch_size: int, draft_rows: int
) -> None:
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("batch_size", batch_size, 1),
                             ("draft_rows", draft_rows, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}.")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy answers).")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 = no nucleus filter).")


def _generate(
    model: nn.Module, batch: Mapping[str, torch.Tensor], settings: dict[str, Any], temperature: float
) -> torch.Tensor:
    return sample_completions(
        model, batch["prompt_input_ids"], batch["prompt_attention_mask"],
        max_new_tokens=settings["max_new_tokens"], temperature=temperature, top_p=settings["top_p"], top_k=0,
        pad_token_id=settings["pad_token_id"], eos_token_id=settings["stop_ids"],
    )  # fmt: skip


def _scored(batch: Mapping[str, torch.Tensor], completion: torch.Tensor, settings: dict[str, Any]) -> dict:
    return completion_batch(batch["prompt_input_ids"], batch["prompt_attention_mask"], completion,
                            torch.ones_like(completion), settings["stop_ids"], settings["pad_token_id"])  # fmt: skip


def _answers(
    model: nn.Module,
    teacher: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    settings: dict[str, Any],
) -> dict[str, float]:
    """``model`` answers every batch's prompts; per generated token: the teacher's NLL, the model's entropy and
    KL(model ‖ teacher); the answers' length and the generation speed."""
    nll, entropy, reverse_kl, generated, answers, seconds = 0.0, 0.0, 0.0, 0, 0, 0.0
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(settings["seed"])
        outputs = []
        for batch in batches:
            began = time.perf_counter()
            outputs.append(_generate(model, batch, settings, settings["temperature"]))
            seconds += time.perf_counter() - began
    for batch, completion in zip(batches, outputs, strict=True):
        scored = _scored(batch, completion, settings)
        labels = scored["labels"][:, 1:]
        mask = labels != -100
        teacher_logits = _logits(teacher, scored)[:, :-1][mask]
        own = teacher_logits if model is teacher else _logits(model, scored)[:, :-1][mask]
        columns = min(own.shape[-1], teacher_logits.shape[-1])
        own_log_probs = F.log_softmax(own[:, :columns], dim=-1)
        teacher_log_probs = F.log_softmax(teacher_logits[:, :columns].to(own.device), dim=-1)
        nll += F.cross_entropy(teacher_logits, labels[mask].to(teacher_logits.device), reduction="sum").item()
        entropy += torch.special.entr(own_log_probs.exp()).sum().item()
        reverse_kl += F.kl_div(teacher_log_probs, own_log_probs, log_target=True, reduction="sum").item()
        generated += int(mask.sum())
        answers += len(completion)
    per_token = max(generated, 1)
    return {
        "teacher_nll_of_own_answers": nll / per_token,
        "entropy_of_own_answers": entropy / per_token,
        "reverse_kl_of_own_answers": reverse_kl / per_token,
        "answer_length": generated / answers,
        "tokens_per_second": generated / max(seconds, 1e-9),
    }


def _as_draft(
    teacher: nn.Module,
    student: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    settings: dict[str, Any],
    rows: int,
) -> tuple[float | None, dict[str, Any]]:
    """The student as a draft model for the teacher on the first ``rows`` prompts, one at a time (as assisted
    generation runs): the share of the teacher's greedy answer tokens the student predicts greedily from the same
    prefix (the per-token acceptance rate of greedy speculative decoding), and the teacher's greedy generation
    alone and with ``assistant_model=student``: seconds of each, the speed-up, whether the outputs are the same."""
    prompts = [
        ids[mask.bool()]
        for batch in batches
        for ids, mask in zip(batch["prompt_input_ids"], batch["prompt_attention_mask"], strict=True)
    ][:rows]
    seconds = {"teacher": 0.0, "assisted": 0.0}
    accepted, tokens, identical = 0, 0, True
    device = _device(teacher)
    stops = torch.tensor(settings["stop_ids"])
    common = {"max_new_tokens": settings["max_new_tokens"], "do_sample": False,
              "eos_token_id": settings["stop_ids"], "pad_token_id": settings["pad_token_id"]}  # fmt: skip
    for prompt in prompts:
        ids = prompt[None].to(device)
        outputs = {}
        for name, extra in (("teacher", {}), ("assisted", {"assistant_model": student})):
            began = time.perf_counter()
            outputs[name] = teacher.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **common, **extra
            )
            seconds[name] += time.perf_counter() - began
        identical = identical and torch.equal(outputs["teacher"], outputs["assisted"])
        answer = outputs["teacher"][0, ids.shape[1] :].cpu()
        stopped = torch.isin(answer, stops).nonzero()
        answer = answer[: int(stopped[0]) + 1] if len(stopped) else answer
        if len(answer):
            full = torch.cat([prompt.cpu(), answer])[None]
            positions = torch.arange(full.shape[1])[None]
            drafts = _logits(
                student,
                {"input_ids": full, "attention_mask": torch.ones_like(full), "position_ids": positions},
            )
            accepted += int((drafts[0, len(prompt) - 1 : -1].argmax(-1).cpu() == answer).sum())
            tokens += len(answer)
    assisted = {
        "rows": len(prompts),
        "teacher_seconds": seconds["teacher"],
        "assisted_seconds": seconds["assisted"],
        "speedup": seconds["teacher"] / seconds["assisted"] if prompts else None,
        "identical_output": identical if prompts else None,
    }
    return (accepted / tokens if tokens else None), assisted
