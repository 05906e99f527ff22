"""A teacher sharded beside the student with FSDP2: exactness on CPU, peak memory per GPU on GPUs.

    python benchmarks/sharded_teacher.py --cpu    # 2 CPU processes (gloo), ~30 s: results/sharded_teacher_cpu.json
    python benchmarks/sharded_teacher.py          # every visible GPU: results/sharded_teacher_gpu.json

The script starts its own processes (``torch.distributed.run``); it can also be launched under ``torchrun``.

``--cpu`` checks, with 2 processes against one process holding everything (float32, tiny Llama and GPT-2
teachers, an odd vocabulary of 97 so the head splits unevenly):

* ``teacher_param_fraction_per_rank``: each rank's share of the `shard_teacher` teacher's parameters;
* ``max_abs_logit_diff``: the sharded teacher's logits against the unsharded teacher's, on each rank's rows;
* ``loss_rel_err`` / ``grad_rel_err``: `vocab_parallel_objective` (each rank its tokens, its head rows) against
  `fused_distillation_loss` on the whole batch and full heads, for forward KL (T = 2, alpha = 0.5), reverse KL
  and JSD; gradients of every student parameter, summed over ranks, as max |diff| / max |reference|;
* ``step_max_abs_param_diff``: one SGD step of an FSDP2 student (blocks sharded, final norm + head kept gathered
  after forward as accelerate does) with the sharded teacher, against the one-process step;
* ``head_peak_mib``: peak resident memory of the head-related part of one fused forward + backward (both heads'
  weights, the objective's buffers and gradients) on one process with the whole batch and full heads, against
  one rank of the vocabulary-parallel objective (``--vocab`` x ``--hidden`` heads, ``--tokens`` per rank).

Without ``--cpu``: for 1 GPU and for all visible GPUs, an FSDP2 student (``--student``, a model name from
`hf_enhance.params.MODEL_ZOO`, built from its config with random weights: nothing is downloaded) trains
``--steps`` steps against the teacher (``--teacher``) placed whole on every GPU (fused objective on full
heads) and sharded (`shard_teacher`, vocabulary-parallel objective). Reported per setup: the peak
``torch.cuda.max_memory_allocated`` over the ranks, the teacher's resident bytes per GPU, and the step time.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _measure import MMAP_THRESHOLD_BYTES, PeakMemory, environment
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_enhance import fused_distillation_loss
from hf_enhance.distillation.placement.fsdp2 import (
    shard_teacher,
    vocab_parallel_distillation_loss,
    vocab_parallel_objective,
)
from hf_enhance.distillation.placement.heads import head_bypassed
from hf_enhance.params import zoo_config

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = (
    {"kind": "forward_kl", "temperature": 2.0, "alpha": 0.5},
    {"kind": "reverse_kl", "temperature": 1.0, "alpha": 0.5},
    {"kind": "jsd", "temperature": 1.0, "alpha": 0.9, "beta": 0.5},
)
VOCAB = 97


@dataclass
class BenchmarkArguments:
    cpu: bool = field(default=False, metadata={"help": "Run the exactness checks on CPU processes (gloo)."})
    nproc: int = field(
        default=2, metadata={"help": "Processes for --cpu (the GPU run uses 1, then all GPUs)."}
    )
    output: str = field(
        default="", metadata={"help": "Results path without extension (default: results/...)."}
    )
    vocab: int = field(default=32768, metadata={"help": "--cpu memory check: vocabulary size of both heads."})
    hidden: int = field(default=256, metadata={"help": "--cpu memory check: hidden size of both heads."})
    tokens: int = field(default=512, metadata={"help": "Tokens per rank (memory check; GPU micro-batch)."})
    teacher: str = field(default="qwen2.5-1.5b", metadata={"help": "GPU run: teacher, a MODEL_ZOO name."})
    student: str = field(default="qwen2.5-0.5b", metadata={"help": "GPU run: student, a MODEL_ZOO name."})
    steps: int = field(default=3, metadata={"help": "GPU run: training steps per setup (first is warm-up)."})
    worker: str = field(default="", metadata={"help": "Internal: the JSON file a launched worker writes."})


def _tiny(kind: str, seed: int, layers: int, width: int) -> nn.Module:
    """A tiny GPT-2 (tied head) or Llama (untied); ``llama_padded``: a Llama whose head has 7 padding rows
    beyond the 97 ids the student predicts (as Qwen2.5-7B's 152064 rows against Qwen2.5-0.5B's 151936)."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=width, n_layer=layers, n_head=2, bos_token_id=0,
            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=VOCAB + 7 * (kind == "llama_padded"), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def shard_like_accelerate(model: nn.Module, **kwargs: Any) -> nn.Module:
    """FSDP2 as accelerate applies it: each decoder block, the input embedding (untied), [final norm, head]
    kept gathered after forward (with the embedding when tied), then the root."""
    blocks = [m for m in model.modules() if type(m).__name__ in set(model._no_split_modules)]
    for block in blocks:
        fully_shard(block, **kwargs)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    norm = getattr(getattr(model, "model", model), "norm", None) or model.transformer.ln_f
    tied = embed.weight is head.weight
    if not tied:
        fully_shard(embed, **kwargs)
    fully_shard([norm, *([embed] if tied else []), head], **{**kwargs, "reshard_after_forward": False})
    fully_shard(model, **kwargs)
    return model


def _hidden(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, nn.Linear]:
    with head_bypassed(model) as head:
        return model(input_ids=ids).logits[:, :-1], head


def _batch(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """The global batch (same on every rank) and this rank's rows; row 0 has no labels (uneven token counts)."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (2 * world, 12), generator=generator)
    labels = ids[:, 1:].clone()
    labels[:, :3] = -100
    labels[0] = -100
    return ids, labels, slice(2 * rank, 2 * rank + 2)


def _objective_errors(
    teacher: nn.Module, reference_teacher: nn.Module, rank: int, world: int
) -> dict[str, float]:
    """Loss and summed-gradient errors of the vocabulary-parallel objective, worst over SETTINGS."""
    ids, labels, mine = _batch(rank, world)
    loss_err = grad_err = 0.0
    for settings in SETTINGS:
        student = _tiny("llama", 2, 2, 32)
        reference = copy.deepcopy(student)
        student_hidden, student_head = _hidden(student, ids[mine])
        with torch.no_grad():
            teacher_hidden, teacher_head = _hidden(teacher, ids[mine])
        result = vocab_parallel_objective(
            student_hidden, student_head, teacher_hidden, teacher_head, labels[mine], **settings
        )
        result.loss.backward()
        hidden, head = _hidden(reference, ids)
        with torch.no_grad():
            reference_hidden, reference_head = _hidden(reference_teacher, ids)
        expected = fused_distillation_loss(
            hidden, head.weight, reference_hidden, reference_head.weight[:VOCAB], labels, **settings
        )
        expected.loss.backward()
        loss_err = max(loss_err, abs(result.loss.item() / expected.loss.item() - 1))
        for param, reference_param in zip(student.parameters(), reference.parameters(), strict=True):
            dist.all_reduce(param.grad)  # each rank's share: its tokens and its head rows
            scale = reference_param.grad.abs().max().clamp_min(1e-30)
            grad_err = max(grad_err, ((param.grad - reference_param.grad).abs().max() / scale).item())
    return {"loss_rel_err": loss_err, "grad_rel_err": grad_err}


def _step_error(kind: str, teacher: nn.Module, reference_teacher: nn.Module, rank: int, world: int) -> float:
    """Max |param diff| after one SGD step of an FSDP2 student against the one-process step."""
    ids, labels, mine = _batch(rank, world)
    student = _tiny("gpt2" if kind == "gpt2" else "llama", 2, 2, 32)
    reference = copy.deepcopy(student)
    shard_like_accelerate(student)
    for model, rows in ((student, mine), (reference, slice(None))):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        hidden, head = _hidden(model, ids[rows])
        with torch.no_grad():
            teacher_hidden, teacher_head = _hidden(
                teacher if model is student else reference_teacher, ids[rows]
            )
        if model is student:
            loss = vocab_parallel_objective(hidden, head, teacher_hidden, teacher_head, labels[rows]).loss
            loss = loss * world  # FSDP2 averages gradients over ranks; each rank holds a share of the sum
        else:
            loss = fused_distillation_loss(
                hidden, head.weight, teacher_hidden, teacher_head.weight[:VOCAB], labels
            ).loss
        loss.backward()
        optimizer.step()
    full = [p.full_tensor() if isinstance(p, DTensor) else p for p in student.parameters()]
    return max((a - b).abs().max().item() for a, b in zip(full, reference.parameters(), strict=True))


def _head_memory(args: BenchmarkArguments, rank: int, world: int) -> dict[str, float]:
    """Peak MiB of heads + fused objective (forward and backward): whole batch on one process vs one rank."""
    generator = torch.Generator().manual_seed(rank)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator)
    teacher_hidden = torch.randn(args.tokens, args.hidden, generator=generator)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=generator)
    rows = -(-args.vocab // world)
    peaks = {}
    for name in ("single_process", "per_rank"):
        if name == "single_process":  # what one process holding everything does with every rank's tokens
            batch = [t.repeat(world, *([1] * (t.dim() - 1))) for t in (hidden, teacher_hidden, labels)]
        dist.barrier()
        with PeakMemory() as peak:
            size = args.vocab if name == "single_process" else min(rows, args.vocab - rank * rows)
            student_head = nn.Linear(args.hidden, size, bias=False)
            teacher_head = nn.Linear(args.hidden, size, bias=False).requires_grad_(False)
            if name == "single_process":
                student_hidden = batch[0].clone().requires_grad_(True)
                loss = fused_distillation_loss(
                    student_hidden, student_head.weight, batch[1], teacher_head.weight, batch[2]
                ).loss
            else:
                student_hidden = hidden.clone().requires_grad_(True)
                loss = vocab_parallel_distillation_loss(
                    student_hidden, student_head.weight, teacher_hidden, teacher_head.weight, labels
                ).loss
            loss.backward()
            del student_head, teacher_head, student_hidden, loss
        peaks[name] = round(peak.mib, 1)
    return peaks


def cpu_worker(args: BenchmarkArguments) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    result: dict[str, Any] = {"loss_rel_err": 0.0, "grad_rel_err": 0.0, "max_abs_logit_diff": 0.0}
    fractions, steps = {}, {}
    for kind in ("llama", "gpt2", "llama_padded"):
        teacher = _tiny(kind, 1, 3, 48).eval()
        reference_teacher = copy.deepcopy(teacher)
        shard_teacher(teacher)
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in teacher.parameters())
        fractions[kind] = local / sum(p.numel() for p in reference_teacher.parameters())
        ids, _, mine = _batch(rank, world)
        with torch.no_grad():
            diff = (teacher(input_ids=ids[mine]).logits - reference_teacher(input_ids=ids[mine]).logits).abs()
        result["max_abs_logit_diff"] = max(result["max_abs_logit_diff"], diff.max().item())
        for name, value in _objective_errors(teacher, reference_teacher, rank, world).items():
            result[name] = max(result[name], value)
        steps[kind] = _step_error(kind, teacher, reference_teacher, rank, world)
    result["teacher_param_fraction"] = fractions
    result["step_max_abs_param_diff"] = max(steps.values())
    result["head_peak_mib"] = _head_memory(args, rank, world)
    return result


def _zoo_model(name: str, device: torch.device) -> nn.Module:
    """A zoo architecture with random weights in bfloat16, built on ``device`` (nothing is downloaded)."""
    with torch.device(device):
        return AutoModelForCausalLM.from_config(zoo_config(name), dtype=torch.bfloat16)


def _gpu_setup(args: BenchmarkArguments, setup: str, device: torch.device, world: int) -> dict[str, float]:
    """Train ``args.steps`` steps with the teacher ``setup`` ("replicated" or "sharded"); everything it builds is
    freed when it returns, so the next setup's peak starts from an empty GPU."""
    torch.cuda.empty_cache()
    student = shard_like_accelerate(_zoo_model(args.student, device))
    teacher = _zoo_model(args.teacher, device).eval().requires_grad_(False)
    if setup == "sharded":
        shard_teacher(teacher)  # the whole copy each GPU built is freed once its shard is kept
    torch.cuda.reset_peak_memory_stats(device)  # from here: resident models + training steps
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4)
    columns = min(model.config.vocab_size for model in (student, teacher))
    ids = torch.randint(0, columns, (args.tokens // 512 or 1, 512), device=device)
    times = []
    for _ in range(args.steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        hidden, head = _hidden(student, ids)
        with torch.no_grad():
            teacher_hidden, teacher_head = _hidden(teacher, ids)
        labels = ids[:, 1:]
        if setup == "sharded":
            loss = vocab_parallel_objective(hidden, head, teacher_hidden, teacher_head, labels).loss * world
        else:  # the first `columns` rows: a bigger head's extra rows are embedding padding
            loss = fused_distillation_loss(
                hidden, head.weight[:columns], teacher_hidden, teacher_head.weight[:columns], labels
            ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    local = (p.to_local() if isinstance(p, DTensor) else p for p in teacher.parameters())
    teacher_bytes = sum(t.numel() * t.element_size() for t in local)
    peak = torch.tensor([torch.cuda.max_memory_allocated(device)], device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {
        "peak_gib_per_gpu": round(peak.item() / 2**30, 2),
        "teacher_gib_per_gpu": round(teacher_bytes / 2**30, 2),
        "step_s": round(min(times[1:] or times), 3),
    }


def gpu_worker(args: BenchmarkArguments) -> dict[str, Any]:
    world = dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    rows = {setup: _gpu_setup(args, setup, device, world) for setup in ("replicated", "sharded")}
    return {"gpus": world, "device": torch.cuda.get_device_name(device), "rows": rows}


def _launch(args: BenchmarkArguments, argv: list[str], nproc: int) -> dict[str, Any]:
    """Run this script in ``nproc`` processes; returns what rank 0 wrote."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "worker.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        if args.cpu:
            env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)  # resident memory follows live tensors
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--standalone", __file__, *argv, "--worker", str(out)]  # fmt: skip
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


def _cpu_summary(args: BenchmarkArguments, measured: dict[str, Any]) -> dict[str, Any]:
    fractions = measured["teacher_param_fraction_per_rank"]
    memory = measured["head_peak_mib_per_rank"]
    ratio = max(memory) / measured["head_peak_mib_single_process"]
    return {
        "max_abs_logit_diff": measured["max_abs_logit_diff"],
        "loss_rel_err": measured["loss_rel_err"],
        "grad_rel_err": measured["grad_rel_err"],
        "step_max_abs_param_diff": measured["step_max_abs_param_diff"],
        "teacher_param_fraction_per_rank": fractions,
        "head_peak_mib": {"single_process": measured["head_peak_mib_single_process"], "per_rank": memory},
        "head_memory_ratio": round(ratio, 3),
        "goals": {
            "logits_exact": measured["max_abs_logit_diff"] == 0.0,
            "loss_within_1e-5": measured["loss_rel_err"] <= 1e-5,
            "grads_within_1e-5": measured["grad_rel_err"] <= 1e-5,
            "step_equals_single_process": measured["step_max_abs_param_diff"] <= 1e-6,
            "about_1_over_n_of_teacher_per_rank": all(
                abs(f - 1 / args.nproc) <= 0.1 / args.nproc
                for per_model in fractions
                for f in per_model.values()
            ),
            "head_memory_about_1_over_n": ratio <= 1.25 / args.nproc,
        },
    }


def _markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Sharded teacher ({payload['mode']})", "", f"`{payload['command']}`", ""]
    if payload["mode"] == "cpu":
        summary = payload["summary"]
        lines += ["| check | value |", "|---|---|"]
        for key in ("max_abs_logit_diff", "loss_rel_err", "grad_rel_err", "step_max_abs_param_diff",
                    "head_memory_ratio"):  # fmt: skip
            lines.append(f"| {key} | {summary[key]:.3g} |")
        lines.append(f"| teacher_param_fraction_per_rank | {summary['teacher_param_fraction_per_rank']} |")
        lines.append(f"| head_peak_mib | {summary['head_peak_mib']} |")
        lines += ["", "| goal | met |", "|---|---|"]
        lines += [f"| {name} | {met} |" for name, met in summary["goals"].items()]
    else:
        lines += [
            "| GPUs | teacher | peak GiB per GPU | teacher GiB per GPU | step s |",
            "|---|---|---|---|---|",
        ]
        for run in payload["runs"]:
            for setup, row in run["rows"].items():
                lines.append(
                    f"| {run['gpus']} × {run['device']} | {setup} | {row['peak_gib_per_gpu']} "
                    f"| {row['teacher_gib_per_gpu']} | {row['step_s']} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    if args.worker:
        dist.init_process_group("gloo" if args.cpu else "nccl")
        measured = cpu_worker(args) if args.cpu else gpu_worker(args)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, measured)
        if int(os.environ["RANK"]) == 0:
            Path(args.worker).write_text(json.dumps(everyone))
        # Exit right after a barrier: gloo torn down at interpreter exit aborts a rank about one run in five
        # (pytorch/pytorch#190489).
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    started = time.perf_counter()
    if args.cpu:
        ranks = _launch(args, argv, args.nproc)
        measured = {key: max(rank[key] for rank in ranks) for key in
                    ("max_abs_logit_diff", "loss_rel_err", "grad_rel_err", "step_max_abs_param_diff")}  # fmt: skip
        measured["teacher_param_fraction_per_rank"] = [rank["teacher_param_fraction"] for rank in ranks]
        measured["head_peak_mib_per_rank"] = [rank["head_peak_mib"]["per_rank"] for rank in ranks]
        measured["head_peak_mib_single_process"] = ranks[0]["head_peak_mib"]["single_process"]
        payload = {"mode": "cpu", "summary": _cpu_summary(args, measured)}
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "No GPU visible: run the GPU measurement on a GPU machine, or pass --cpu for the checks."
            )
        counts = sorted({1, torch.cuda.device_count()})
        payload = {"mode": "gpu", "runs": [_launch(args, argv, n)[0] for n in counts]}
    payload.update(
        command="python benchmarks/sharded_teacher.py " + " ".join(argv),
        settings={k: v for k, v in asdict(args).items() if k != "worker"},
        environment=environment(time.perf_counter() - started),
    )
    output = Path(args.output) if args.output else RESULTS / f"sharded_teacher_{payload['mode']}"
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    output.with_suffix(".md").write_text(_markdown(payload))
    print(_markdown(payload))
    return payload


if __name__ == "__main__":
    main()
