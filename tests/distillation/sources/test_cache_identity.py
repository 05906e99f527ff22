"""A teacher cache knows its teacher, survives damaged files and a second writer."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_enhance import DistillationTrainer, cache_teacher_logits
from hf_enhance.distillation import load_teacher_cache
from tests.tiny import distillation_args, lm_dataset, pad_collator, tiny_gpt2


@pytest.fixture
def teacher() -> nn.Module:
    return tiny_gpt2(seed=1).eval()


def _cache(teacher: nn.Module, folder: Path, rows: int = 6):
    return cache_teacher_logits(teacher, lm_dataset(rows), output_dir=folder, top_k=4, batch_size=2, shard_size=2,
                                show_progress=False)  # fmt: skip


def _entries(cache) -> list:
    return [np.asarray(row["teacher_topk_logprobs"]).tolist() for row in cache.dataset]


def test_another_teachers_cache_is_neither_reused_nor_completed(teacher: nn.Module, tmp_path: Path) -> None:
    _cache(teacher, tmp_path)
    other = tiny_gpt2(seed=2).eval()
    with pytest.raises(ValueError, match=r"was built by another teacher \(they differ in weights\)"):
        _cache(other, tmp_path)  # reuse
    (tmp_path / "shard-00002.arrow").unlink()  # half built by the first teacher
    with pytest.raises(ValueError, match="can be neither reused nor completed"):
        _cache(other, tmp_path)
    assert _entries(_cache(teacher, tmp_path)) == _entries(
        _cache(teacher, tmp_path / "clean")
    )  # its own: resumed


@pytest.mark.parametrize(("other", "differs"), [
    (lambda: tiny_gpt2(seed=2), "weights"),
    (lambda: tiny_gpt2(seed=1, n_layer=3), "config, weights"),
    (lambda: tiny_gpt2(seed=1).to(torch.bfloat16), "weights, dtype"),
])  # fmt: skip
def test_a_live_teacher_other_than_the_caches_is_refused(
    teacher: nn.Module, tmp_path: Path, other, differs: str
) -> None:
    cache = _cache(teacher, tmp_path / "cache")
    with pytest.raises(
        ValueError, match=rf"built by another teacher than teacher_model: they differ in {differs}"
    ):
        DistillationTrainer(model=tiny_gpt2(seed=0), teacher_model=other(), teacher_cache=cache,
                            args=distillation_args(tmp_path), train_dataset=lm_dataset(6),
                            data_collator=pad_collator)  # fmt: skip


def test_the_caches_own_teacher_is_accepted_next_to_it(teacher: nn.Module, tmp_path: Path) -> None:
    cache = _cache(teacher, tmp_path / "cache")
    assert cache.teacher is not None and load_teacher_cache(tmp_path / "cache").teacher == cache.teacher
    trainer = DistillationTrainer(model=tiny_gpt2(seed=0), teacher_model=tiny_gpt2(seed=1), teacher_cache=cache,
                                  args=distillation_args(tmp_path, max_steps=1), train_dataset=lm_dataset(6),
                                  data_collator=pad_collator)  # fmt: skip
    trainer.train()


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: bytes(range(256)) * 4])
def test_a_damaged_shard_is_named_and_a_rerun_rebuilds_it(teacher: nn.Module, tmp_path: Path, damage) -> None:
    clean = _entries(_cache(teacher, tmp_path / "clean"))
    _cache(teacher, tmp_path / "cache")
    shard = tmp_path / "cache" / "shard-00001.arrow"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(ValueError, match=r"shard .*shard-00001.arrow is damaged.*Rerun cache_teacher_logits"):
        load_teacher_cache(tmp_path / "cache")
    assert _entries(_cache(teacher, tmp_path / "cache")) == clean


def test_empty_settings_are_damaged_settings(teacher: nn.Module, tmp_path: Path) -> None:
    clean = _entries(_cache(teacher, tmp_path / "clean"))
    _cache(teacher, tmp_path / "cache")
    (tmp_path / "cache" / "teacher_cache.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is damaged .*Rerun cache_teacher_logits"):
        load_teacher_cache(tmp_path / "cache")
    assert _entries(_cache(teacher, tmp_path / "cache")) == clean


WRITER = """
import sys
from tests.tiny import lm_dataset, tiny_gpt2
from hf_enhance import cache_teacher_logits
cache_teacher_logits(tiny_gpt2(seed=1).eval(), lm_dataset(40), output_dir=sys.argv[1], top_k=4, batch_size=2,
                     shard_size=2, show_progress=False)
"""


def test_two_writers_on_one_cache_finish_it_as_one_would(teacher: nn.Module, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    _cache(teacher, tmp_path / "cache", rows=40)
    for shard in list((tmp_path / "cache").glob("shard-*.arrow"))[::2]:
        shard.unlink()  # half done: both writers resume the same missing shards
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "cache")], cwd=root,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    clean = cache_teacher_logits(teacher, lm_dataset(40), output_dir=tmp_path / "clean", top_k=4, batch_size=2,
                                 shard_size=2, show_progress=False)  # fmt: skip
    assert _entries(load_teacher_cache(tmp_path / "cache")) == _entries(clean)
    assert not list((tmp_path / "cache").glob("*.partial*"))


def test_a_cache_from_before_fingerprints_is_not_resumed_and_is_warned_about_next_to_a_teacher(
    teacher: nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _cache(teacher, tmp_path / "cache")
    settings_file = tmp_path / "cache" / "teacher_cache.json"
    settings = json.loads(settings_file.read_text())
    del settings["teacher"]
    settings_file.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"records no teacher \(built before 0.2\)"):
        _cache(teacher, tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        DistillationTrainer(model=tiny_gpt2(seed=0), teacher_model=tiny_gpt2(seed=1),
                            teacher_cache=load_teacher_cache(tmp_path / "cache"), args=distillation_args(tmp_path),
                            train_dataset=lm_dataset(6), data_collator=pad_collator)  # fmt: skip
    assert "records no teacher (built before teacher fingerprints)" in caplog.text
