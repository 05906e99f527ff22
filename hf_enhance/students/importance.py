"""Importance of layers, MLP neurons, attention heads and hidden channels, measured on calibration batches.

- Block influence (ShortGPT): 1 − cos(h_in, h_out) per layer, averaged over real tokens. A layer that barely
  turns the residual stream matters little.
- Skip divergence: KL(full model ‖ model with a layer skipped) of the output distribution, per layer: the
  distillation loss the student starts from if it lacks that layer. `iterative_skip_order` removes layers one at
  a time, re-measuring after each removal, which accounts for layers that stand in for one another.
- Width (Minitron, with each unit weighted by the size of what it writes): an MLP neuron scores
  mean|a_j| · ‖W_down[:, j]‖, a query head the mean norm of its share of the attention output projection, a
  hidden channel its mean |h_c| over every block's input.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from hf_enhance.modeling import logits_of
from hf_enhance.students.calibration import Batches
from hf_enhance.students.layouts import BlockLayout

__all__ = ["Importance", "iterative_skip_order", "measure_importance", "skip_divergence"]


@dataclass
class Importance:
    """Scores measured on the teacher; higher is more important. Width scores are None when not measured."""

    block_influence: list[float]
    neurons: list[torch.Tensor] | None = None
    query_heads: list[torch.Tensor] | None = None
    channels: torch.Tensor | None = None


def _run(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """A forward without a KV cache (calibration never generates)."""
    if "use_cache" in inspect.signature(model.forward).parameters:
        return model(**batch, use_cache=False)
    return model(**batch)


def _hidden_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output: Any) -> torch.Tensor:
    return output if torch.is_tensor(output) else output[0]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of ``values`` (``[B, T, ...]``, or ``[B * T, ...]`` as OPT's MLP sees them)."""
    weights = mask.reshape(-1).to(torch.float32)
    leading = mask.dim() if values.shape[: mask.dim()] == mask.shape else 1
    flat = values.float().reshape(weights.numel(), -1)
    return (weights @ flat / weights.sum()).reshape(values.shape[leading:])


def _neuron_weight_norms(module: nn.Module) -> torch.Tensor:
    """‖W[:, j]‖ for each input j of the down projection (its neurons)."""
    weight = module.weight.detach().float()
    return weight.norm(dim=1) if isinstance(module, Conv1D) else weight.norm(dim=0)


class _Recorder:
    """Forward hooks on the teacher that accumulate the statistics of `Importance`, batch by batch."""

    def __init__(self, stack: nn.ModuleList, layout: BlockLayout | None, heads: int) -> None:
        self.stack, self.layout, self.heads = stack, layout, heads
        self.mask = torch.ones(1, 1, dtype=torch.bool)
        self.weight = 0.0
        self.influence = [0.0] * len(stack)
        self.neurons: list[torch.Tensor | float] = [0.0] * len(stack)
        self.query_heads: list[torch.Tensor | float] = [0.0] * len(stack)
        self.channels: torch.Tensor | float = 0.0

    @contextmanager
    def hooks(self) -> Iterator[None]:
        with ExitStack() as stack:
            for index, block in enumerate(self.stack):
                handle = block.register_forward_hook(self._block_hook(index), with_kwargs=True)
                stack.callback(handle.remove)
                if self.layout is None:
                    continue
                down = block.get_submodule(self.layout.mlp_out)
                stack.callback(down.register_forward_pre_hook(self._neuron_hook(index)).remove)
                if self.layout.output is not None:
                    out = block.get_submodule(self.layout.output)
                    stack.callback(out.register_forward_pre_hook(self._head_hook(index, out)).remove)
            yield

    def _block_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            before, after = _hidden_in(args, kwargs), _hidden_out(output)
            cosine = F.cosine_similarity(before.float(), after.float(), dim=-1)
            self.influence[index] += self.weight * float(_masked_mean(1 - cosine, self.mask))
            if self.layout is not None and self.layout.prunes_heads:
                self.channels = self.channels + self.weight * _masked_mean(before.abs(), self.mask)

        return hook

    def _neuron_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            score = _masked_mean(args[0].abs(), self.mask) * _neuron_weight_norms(module)
            self.neurons[index] = self.neurons[index] + self.weight * score

        return hook

    def _head_hook(self, index: int, out: nn.Module) -> Any:
        weight = out.weight.detach().float()
        width = weight.shape[0]
        per_head = weight.reshape(width, self.heads, -1)

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            inputs = args[0].float()
            heads = inputs.reshape(*inputs.shape[:-1], self.heads, -1)
            contribution = torch.einsum("bthd,ohd->btho", heads, per_head).norm(dim=-1)
            self.query_heads[index] = self.query_heads[index] + self.weight * _masked_mean(
                contribution, self.mask
            )

        return hook


def measure_importance(
    model: nn.Module,
    stack: nn.ModuleList,
    batches: Batches,
    layout: BlockLayout | None,
    num_heads: int,
    progress: bool = True,
) -> Importance:
    """One pass over the calibration batches: block influence, and width scores when ``layout`` is given."""
    recorder = _Recorder(stack, layout, num_heads)
    with torch.no_grad(), recorder.hooks():
        for batch in tqdm(batches, desc="Measuring importance", disable=not progress):
            recorder.mask = Batches.mask(batch)
            recorder.weight = float(recorder.mask.sum()) / batches.tokens
            _run(model, batch)
    importance = Importance(block_influence=recorder.influence)
    if layout is not None:
        importance.neurons = [torch.as_tensor(score) for score in recorder.neurons]
        if layout.prunes_heads:
            importance.query_heads = [torch.as_tensor(score) for score in recorder.query_heads]
            importance.channels = torch.as_tensor(recorder.channels)
    return importance


@contextmanager
def skipped(stack: nn.ModuleList, layers: Sequence[int]) -> Iterator[None]:
    """Within the block, the listed layers pass their input through unchanged (the model runs without them)."""

    def passthrough(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = _hidden_in(args, kwargs)
        return hidden if torch.is_tensor(output) else (hidden, *output[1:])

    handles = [stack[index].register_forward_hook(passthrough, with_kwargs=True) for index in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_log_probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = logits_of(_run(model, batch))
    return F.log_softmax(logits.float(), dim=-1)


def _divergence(reference: torch.Tensor, log_probs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean KL(reference ‖ log_probs) over real tokens (or over rows, for sequence-level outputs)."""
    per_position = F.kl_div(log_probs, reference, log_target=True, reduction="none").sum(-1)
    if per_position.dim() == 1:
        return float(per_position.sum())
    return float((per_position * mask).sum())


def skip_divergence(
    model: nn.Module,
    stack: nn.ModuleList,
    batches: Batches,
    candidates: Sequence[int],
    already_skipped: Sequence[int] = (),
    progress: bool = True,
    desc: str = "Skipping each layer",
) -> list[float]:
    """Per candidate: mean KL(full model ‖ model without ``already_skipped`` and the candidate)."""
    totals = [0.0] * len(candidates)
    rows = 0
    with torch.no_grad(), tqdm(total=len(batches) * len(candidates), desc=desc, disable=not progress) as bar:
        for batch in batches:
            mask = Batches.mask(batch)
            reference = _output_log_probs(model, batch)
            rows += int(mask.sum()) if reference.dim() > 2 else reference.shape[0]
            for position, layer in enumerate(candidates):
                with skipped(stack, [*already_skipped, layer]):
                    totals[position] += _divergence(reference, _output_log_probs(model, batch), mask)
                bar.update()
    return [total / rows for total in totals]


def iterative_skip_order(
    model: nn.Module, stack: nn.ModuleList, batches: Batches, removals: int, progress: bool = True
) -> tuple[list[int], list[float]]:
    """Remove ``removals`` layers greedily, each time the one whose removal costs the least divergence.

    Returns the removed layers in removal order and the divergence after each removal.
    """
    removed: list[int] = []
    costs: list[float] = []
    for step in range(removals):
        candidates = [index for index in range(len(stack)) if index not in removed]
        scores = skip_divergence(
            model, stack, batches, candidates, removed, progress, desc=f"Removal {step + 1}/{removals}"
        )
        best = min(range(len(candidates)), key=scores.__getitem__)
        removed.append(candidates[best])
        costs.append(scores[best])
    return removed, costs
