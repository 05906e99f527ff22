"""`student_from_teacher`: a smaller model of the teacher's own class, initialised from the teacher's weights.

The student is built from a new config (fewer layers, narrower MLPs, fewer heads, a smaller hidden size) by the
teacher's own class, so every per-layer structure (layer indices used by caches, ``layer_types``, sliding
windows) is made consistent by the model itself; the teacher's weights are then copied in, sliced to what was
kept. What was kept is written to ``student.config.hf_enhance_student``, so it is saved with the student.
"""

from __future__ import annotations

import copy
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from hf_enhance.modeling import check_weights_present, max_positions, repeated_blocks
from hf_enhance.students.calibration import Batches, CalibrationData, calibration_batches
from hf_enhance.students.importance import (
    Importance,
    iterative_skip_order,
    measure_importance,
    skip_divergence,
)
from hf_enhance.students.layouts import BlockLayout, block_layout
from hf_enhance.students.record import RECORD_KEY, build_record

__all__ = ["LAYER_STRATEGIES", "RECORD_KEY", "student_from_teacher"]

LAYER_STRATEGIES: tuple[str, ...] = ("uniform", "block_influence", "skip_divergence", "iterative_skip")


@dataclass(frozen=True)
class _Teacher:
    """The facts about the teacher that the plan needs."""

    model: PreTrainedModel
    stack_name: str
    stack: nn.ModuleList
    layout: BlockLayout | None
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int


def _describe(teacher: Any, width: bool) -> _Teacher:
    if not isinstance(teacher, PreTrainedModel):
        hint = " (a PEFT model: merge or unwrap it first)" if hasattr(teacher, "peft_config") else ""
        raise TypeError(
            f"The teacher is a {type(teacher).__name__}{hint}; student_from_teacher builds a smaller model of the "
            "teacher's transformers class, so it needs a transformers PreTrainedModel."
        )
    check_weights_present(teacher)
    config = teacher.config
    stacks = repeated_blocks(teacher)
    layers = getattr(config, "num_hidden_layers", None)
    matching = {name: stack for name, stack in stacks.items() if len(stack) == layers}
    if len(matching) != 1:
        raise ValueError(
            f"Cannot find the block stack of this {config.model_type!r} model ({type(teacher).__name__}): "
            f"expected one list of {layers} repeated blocks (config.num_hidden_layers), found "
            f"{ {name: len(stack) for name, stack in stacks.items()} or 'none' }. student_from_teacher handles "
            "models with one stack of blocks (decoder-only or encoder-only, found by "
            "hf_enhance.modeling.repeated_blocks); encoder-decoders are not supported."
        )
    ((stack_name, stack),) = matching.items()
    layout = block_layout(config.model_type, "Width pruning") if width else None
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    intermediate = 0
    if layout is not None:
        down = stack[0].get_submodule(layout.mlp_out)
        intermediate = int(down.weight.shape[0] if isinstance(down, Conv1D) else down.weight.shape[1])
    return _Teacher(
        teacher, stack_name, stack, layout, int(config.hidden_size), intermediate, heads, kv_heads, head_dim
    )


def _check_size(name: str, value: int | None, maximum: int) -> None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum
    ):
        raise ValueError(
            f"{name}={value!r} must be an integer in [1, {maximum}] (the teacher's value is {maximum})."
        )


def _layer_indices(layers: Sequence[int] | None) -> list[int] | None:
    """``layers`` as a list of ints: a list, tuple, numpy array or tensor of integers (no bools, no floats)."""
    if layers is None:
        return None
    values = layers.tolist() if hasattr(layers, "tolist") else list(layers)
    if not isinstance(values, list):  # a 0-d array or tensor
        values = [values]
    wrong = [value for value in values if isinstance(value, bool) or not isinstance(value, numbers.Integral)]
    if wrong:
        raise ValueError(
            f"layers holds {wrong[:5]}, which are not teacher layer indices: pass integers, e.g. layers=[0, 2, 5] "
            "(a list, tuple, numpy array or tensor of ints; True/False are not indices)."
        )
    return [int(value) for value in values]


def _check_request(
    teacher: _Teacher,
    layers: Sequence[int] | None,
    num_layers: int | None,
    strategy: str,
    intermediate_size: int | None,
    num_attention_heads: int | None,
    hidden_size: int | None,
) -> None:
    depth = len(teacher.stack)
    if layers is not None and num_layers is not None:
        raise ValueError(
            "Pass layers=[...] (exactly these) or num_layers=N (chosen by layer_strategy), not both."
        )
    if layers is not None:
        if not layers:
            raise ValueError("layers=[] keeps no layer; a student needs at least one.")
        wrong = [index for index in layers if not 0 <= index < depth]
        if wrong:
            raise ValueError(
                f"layers has indices {wrong} outside the teacher's {depth} layers (0 to {depth - 1})."
            )
        repeated = sorted({index for index in layers if layers.count(index) > 1})
        if repeated:
            raise ValueError(
                f"layers repeats {repeated}: each teacher layer can be kept once (a repeated layer would be two "
                "copies of the same weights). List each index once."
            )
    _check_size("num_layers", num_layers, depth)
    if strategy not in LAYER_STRATEGIES:
        raise ValueError(
            f"Unknown layer_strategy {strategy!r}. Valid choices: {', '.join(LAYER_STRATEGIES)}."
        )
    layout = teacher.layout
    if intermediate_size is not None:
        _check_size("intermediate_size", intermediate_size, teacher.intermediate)
    if (
        (num_attention_heads is not None or hidden_size is not None)
        and layout is not None
        and not layout.prunes_heads
    ):
        raise ValueError(
            f"{teacher.model.config.model_type!r} computes its head size as hidden_size / heads, so its heads and "
            "hidden size cannot shrink independently; prune its depth (layers/num_layers) and MLP width "
            "(intermediate_size) instead."
        )
    if num_attention_heads is not None:
        _check_size("num_attention_heads", num_attention_heads, teacher.heads)
        group = teacher.heads // teacher.kv_heads
        if num_attention_heads % group:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} does not divide into the teacher's key/value groups: "
                f"its {teacher.heads} query heads share {teacher.kv_heads} key/value heads, {group} per group, and "
                f"heads are pruned a whole group at a time. Use a multiple of {group}."
            )
    _check_size("hidden_size", hidden_size, teacher.hidden)


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores, in ascending index order (the teacher's order is kept)."""
    return scores.float().topk(count).indices.sort().values


def _choose_layers(
    teacher: _Teacher,
    num_layers: int,
    strategy: str,
    batches: Batches | None,
    importance: Importance | None,
    progress: bool,
) -> tuple[list[int], list[float] | None]:
    depth = len(teacher.stack)
    if strategy == "uniform":
        return sorted({round(i * (depth - 1) / max(num_layers - 1, 1)) for i in range(num_layers)}), None
    assert batches is not None and importance is not None
    if strategy == "block_influence":
        scores = importance.block_influence
    elif strategy == "skip_divergence":
        scores = skip_divergence(teacher.model, teacher.stack, batches, range(depth), progress=progress)
    else:
        removed, _ = iterative_skip_order(teacher.model, teacher.stack, batches, depth - num_layers, progress)
        # Score = how late a layer would be removed; kept layers score highest.
        scores = [float(depth) for _ in range(depth)]
        for order, index in enumerate(removed):
            scores[index] = float(order)
    return _top(torch.tensor(scores), num_layers).tolist(), list(scores)


def _head_plan(teacher: _Teacher, query_scores: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Key/value groups kept in one layer, by the summed score of their query heads."""
    group = teacher.heads // teacher.kv_heads
    return _top(query_scores.reshape(teacher.kv_heads, group).sum(1), num_heads // group)


def _units(indices: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of whole units: indices of units of ``size`` rows -> the indices of their rows."""
    return (indices[:, None] * size + torch.arange(size)).reshape(-1)


@dataclass
class _Plan:
    """What the student keeps: teacher layers and, per kept layer, neurons and key/value groups; channels."""

    layers: list[int]
    neurons: dict[int, torch.Tensor]
    kv_groups: dict[int, torch.Tensor]
    channels: torch.Tensor | None


def _roles(teacher: _Teacher, plan: _Plan, layer: int | None, relative: str) -> dict[str, Any]:
    """Kept indices on each side ("out": what the module produces, "in": what it reads) set by a block role.

    A side present with None is owned by a role but kept whole (a query projection's rows are heads, never
    hidden channels, even when heads are not pruned). Absent sides are hidden channels if their size says so.
    """
    layout = teacher.layout
    if layout is None or layer is None:
        return {}
    if relative in layout.mlp_in:
        neurons = plan.neurons.get(layer)
        fused = layout.mlp_in_fused
        return {
            "out": None
            if neurons is None
            else torch.cat([neurons + k * teacher.intermediate for k in range(fused)])
        }
    if relative == layout.mlp_out:
        return {"in": plan.neurons.get(layer)}
    if relative not in layout.attention_modules():
        return {}
    side = "in" if relative == layout.output else "out"
    groups = plan.kv_groups.get(layer)
    if groups is None:
        return {side: None}
    query = _units(_units(groups, teacher.heads // teacher.kv_heads), teacher.head_dim)
    kv = _units(groups, teacher.head_dim)
    if relative == layout.qkv:
        q_rows, kv_rows = teacher.heads * teacher.head_dim, teacher.kv_heads * teacher.head_dim
        return {side: torch.cat([query, q_rows + kv, q_rows + kv_rows + kv])}
    return {side: query if relative in (layout.query, layout.output) else kv}


def _param_sides(module: nn.Module | None, param_name: str, value: torch.Tensor) -> dict[str, int]:
    """Which dim of a parameter is the module's output side and which its input side."""
    if isinstance(module, nn.Linear):
        return {"out": 0, "in": 1} if param_name == "weight" else {"out": 0}
    if isinstance(module, Conv1D):
        return {"in": 0, "out": 1} if param_name == "weight" else {"out": 0}
    if isinstance(module, nn.Embedding):
        return {"out": 1}
    return {"out": 0} if value.dim() == 1 else {}


def _student_state(teacher: _Teacher, plan: _Plan) -> dict[str, torch.Tensor]:
    """The teacher's state dict renamed to the kept layers' new positions and sliced to what was kept."""
    pattern = re.compile(rf"^{re.escape(teacher.stack_name)}\.(\d+)\.(.+)$")
    position = {layer: new for new, layer in enumerate(plan.layers)}
    modules = dict(teacher.model.named_modules())
    state = {}
    for key, tensor in teacher.model.state_dict().items():
        module_name, _, param_name = key.rpartition(".")
        layer, relative = None, module_name
        match = pattern.match(key)
        if match:
            layer = int(match.group(1))
            if layer not in position:
                continue
            key = f"{teacher.stack_name}.{position[layer]}.{match.group(2)}"
            relative = match.group(2).rpartition(".")[0]
        value = tensor.detach()
        roles = _roles(teacher, plan, layer, relative)
        for side, dim in _param_sides(modules.get(module_name), param_name, value).items():
            kept = roles.get(side)
            if side not in roles and plan.channels is not None and value.shape[dim] == teacher.hidden:
                kept = plan.channels
            if kept is not None:
                value = value.index_select(dim, kept.to(value.device))
        state[key] = value.clone()
    return state


def _student_config(
    teacher: _Teacher, plan: _Plan, sizes: dict[str, int | None], record: dict[str, Any]
) -> Any:
    """The teacher's config with the student's depth and widths; per-layer lists follow the kept layers."""
    config = copy.deepcopy(teacher.model.config)
    depth = len(teacher.stack)
    for name, value in list(vars(config).items()):
        if not name.startswith("_") and isinstance(value, (list, tuple)) and len(value) == depth:
            setattr(config, name, type(value)(value[index] for index in plan.layers))
    config.num_hidden_layers = len(plan.layers)
    if sizes["intermediate_size"] is not None and teacher.layout is not None:
        setattr(config, teacher.layout.intermediate_attr, sizes["intermediate_size"])
    if sizes["num_attention_heads"] is not None or sizes["hidden_size"] is not None:
        config.head_dim = teacher.head_dim  # explicit: no longer hidden_size / heads
    if sizes["num_attention_heads"] is not None:
        config.num_attention_heads = sizes["num_attention_heads"]
        config.num_key_value_heads = sizes["num_attention_heads"] // (teacher.heads // teacher.kv_heads)
    if sizes["hidden_size"] is not None:
        config.hidden_size = sizes["hidden_size"]
    setattr(config, RECORD_KEY, record)
    # The student exists nowhere on disk yet: the teacher's name would make PEFT name the teacher as the base of
    # an adapter trained on the student (save_adapter saves the student with the adapter instead).
    config.name_or_path = ""
    return config


def student_from_teacher(
    teacher: PreTrainedModel,
    *,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    layer_strategy: str = "block_influence",
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    hidden_size: int | None = None,
    calibration: CalibrationData | None = None,
    calibration_batch_size: int = 8,
    progress: bool = True,
) -> PreTrainedModel:
    """A smaller model of the teacher's class, initialised from the teacher's weights (DistilBERT, Minitron).

    Depth: ``layers=[...]`` keeps exactly those teacher layers, in that order; ``num_layers=N`` keeps N chosen by
    ``layer_strategy``:

    - ``"uniform"``: evenly spaced, first and last included (DistilBERT's every other layer); no data needed.
    - ``"block_influence"``: the N layers that turn the residual stream most, 1 − cos(h_in, h_out) (ShortGPT).
    - ``"skip_divergence"``: the N layers whose skipping alone raises KL(teacher ‖ teacher without it) most.
    - ``"iterative_skip"``: drops layers one at a time, each time the one whose removal (given the layers already
      dropped) raises that divergence least. Costs (L − N) rounds of up to L passes over the calibration data;
      accounts for layers that stand in for each other, which one-shot scores miss.

    Width (Minitron): ``intermediate_size`` keeps the MLP neurons with the largest mean |activation| ·
    ‖down-projection column‖; ``num_attention_heads`` keeps whole key/value groups (under GQA, query heads come a
    group at a time) by the summed norm of their heads' output; ``hidden_size`` keeps the residual channels with
    the largest mean |activation|. Heads and hidden size need an architecture with an explicit ``head_dim``
    (the Llama family, Phi-3), not GPT-2/BERT. Scores are measured once, on the full teacher.

    ``calibration`` (needed by every choice except explicit layers or ``uniform`` with no width pruning): a
    ``[sequences, tokens]`` tensor of token ids, a ``datasets.Dataset`` with ``input_ids`` (and optionally
    ``attention_mask``), or an iterable of such batches; padded tokens are ignored.

    The student is returned in eval mode, in the teacher's dtype, on the teacher's device, sharing no tensor with
    it. ``student.config.hf_enhance_student`` records what was kept (layers, neurons, key/value groups, hidden
    channels, importance scores, calibration size); it is saved in ``config.json`` by ``save_pretrained`` and
    gives `DistillationTrainer` its default hidden-state layer map. Keeping every layer at full width reproduces
    the teacher's outputs exactly.
    """
    sizes = {
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
        "hidden_size": hidden_size,
    }
    width = any(value is not None for value in sizes.values())
    described = _describe(teacher, width)
    layers = _layer_indices(layers)
    _check_request(
        described, layers, num_layers, layer_strategy, intermediate_size, num_attention_heads, hidden_size
    )
    depth = len(described.stack)
    needs_data = width or (num_layers is not None and layer_strategy != "uniform")
    batches = None
    if needs_data:
        vocab_size = getattr(teacher.config, "vocab_size", None)
        batches = calibration_batches(
            calibration, teacher.device, calibration_batch_size, vocab_size, max_positions(teacher)
        )
    was_training = teacher.training
    teacher.eval()
    try:
        importance = None
        if batches is not None:
            importance = measure_importance(
                teacher, described.stack, batches, described.layout, described.heads, progress
            )
        strategy: str | None = None
        scores = None
        if layers is not None:
            kept, strategy = list(layers), "given"
        elif num_layers is not None and num_layers < depth:
            kept, scores = _choose_layers(
                described, num_layers, layer_strategy, batches, importance, progress
            )
            strategy = layer_strategy
        else:
            kept = list(range(depth))
    finally:
        teacher.train(was_training)
    plan = _Plan(kept, {}, {}, None)
    if importance is not None and importance.neurons is not None:
        if intermediate_size is not None and intermediate_size < described.intermediate:
            plan.neurons = {layer: _top(importance.neurons[layer], intermediate_size) for layer in kept}
        if num_attention_heads is not None and num_attention_heads < described.heads:
            assert importance.query_heads is not None
            plan.kv_groups = {
                layer: _head_plan(described, importance.query_heads[layer], num_attention_heads)
                for layer in kept
            }
        if hidden_size is not None and hidden_size < described.hidden:
            assert importance.channels is not None
            plan.channels = _top(importance.channels, hidden_size)
    record = build_record(described, plan, strategy, scores, importance, batches)
    config = _student_config(described, plan, sizes, record)
    with init_empty_weights(include_buffers=False):
        student = type(teacher)(config)
    state = _student_state(described, plan)
    missing, unexpected = student.load_state_dict(state, strict=False, assign=True)
    tied = _tied_parameter_names(student)
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"Building the {type(teacher).__name__} student left parameters unmatched (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); this architecture needs its own BlockLayout "
            "(hf_enhance.students.register_student_layout)."
        )
    student.tie_weights()
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def _tied_parameter_names(model: PreTrainedModel) -> set[str]:
    """Names of parameters that `tie_weights` fills in from another (e.g. ``lm_head.weight``)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    output = model.get_output_embeddings()
    if output is None:
        return set()
    return {f"{name}.weight" for name, module in model.named_modules() if module is output}
