"""Offline teacher cache: contents, compactness, resumption, joining to training rows, end-to-end exactness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

from hf_enhance import cache_teacher_logits, distillation_loss, sparse_distillation_loss
from hf_enhance.distillation import TeacherCacheCollator, load_teacher_cache, with_teacher_cache
from tests.tiny import VOCAB, lm_dataset, pad_collator, tiny_bert_classifier, tiny_gpt2


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return tiny_gpt2(seed=1).eval()


def row_log_probs(teacher: nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(teacher(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_entries_are_the_teachers_top_k_per_attended_token(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(7).map(lambda row: {"attention_mask": [1] * (len(row["input_ids"]) - 2) + [0, 0]})
    cache = cache_teacher_logits(
        teacher, data, output_dir=tmp_path, top_k=5, batch_size=3, shard_size=4, logprob_dtype="float32"
    )
    assert cache.top_k == 5 and cache.vocab_size == VOCAB and len(cache.dataset) == 7
    assert cache.dataset.features["teacher_topk_ids"].feature.feature.dtype == "uint16"
    for row, entry in zip(data, cache.dataset, strict=True):
        kept = row["input_ids"][:-2]
        log_probs = row_log_probs(teacher, kept)
        values, ids = log_probs.topk(5, dim=-1)
        residual = torch.logsumexp(log_probs.scatter(-1, ids, -math.inf), dim=-1)
        assert np.array_equal(np.array(entry["teacher_topk_ids"]), ids.numpy())
        torch.testing.assert_close(torch.tensor(entry["teacher_topk_logprobs"]), values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            torch.tensor(entry["teacher_residual_logprob"]), residual, rtol=1e-5, atol=1e-5
        )
    assert cache.num_tokens == sum(len(row["input_ids"]) - 2 for row in data)


def test_compact_storage_and_reported_size(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(16, min_len=60, max_len=64)
    cache = cache_teacher_logits(teacher, data, output_dir=tmp_path, top_k=32, batch_size=8, shard_size=8)
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("shard-*.arrow"))
    assert cache.bytes_per_token == pytest.approx(on_disk / cache.num_tokens)
    payload = 32 * (2 + 2) + 4  # uint16 ids, float16 log-probs, float32 residual
    assert payload < cache.bytes_per_token < payload + 12
    assert cache.dataset.features["teacher_topk_logprobs"].feature.feature.dtype == "float16"
    entry = cache.dataset[0]
    expected = row_log_probs(teacher, data[0]["input_ids"]).topk(32, dim=-1).values
    torch.testing.assert_close(torch.tensor(entry["teacher_topk_logprobs"]), expected, rtol=2e-3, atol=2e-3)


class FailingTeacher(nn.Module):
    """Counts forward calls and raises on call number `fail_at` (an interrupted run)."""

    def __init__(self, model: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.model(**inputs).logits


def test_interrupted_run_resumes_after_the_last_finished_shard(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(10)
    settings = {"top_k": 4, "batch_size": 2, "shard_size": 4}
    interrupted = FailingTeacher(teacher, fail_at=4)  # shard 0 takes calls 1-2; shard 1 dies on its 2nd call
    with pytest.raises(KeyboardInterrupt):
        cache_teacher_logits(interrupted, data, output_dir=tmp_path / "cache", **settings)
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*")) == ["shard-00000.arrow"]
    resumed_teacher = FailingTeacher(teacher)
    resumed = cache_teacher_logits(resumed_teacher, data, output_dir=tmp_path / "cache", **settings)
    assert resumed_teacher.calls == 3  # shard 1 (2 batches) and shard 2 (1 batch): shard 0 was kept
    fresh = cache_teacher_logits(teacher, data, output_dir=tmp_path / "fresh", **settings)
    assert resumed.dataset.to_dict() == fresh.dataset.to_dict()
    assert resumed.num_tokens == fresh.num_tokens


def test_resuming_with_other_settings_or_data_is_refused(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(6)
    cache_teacher_logits(teacher, data, output_dir=tmp_path / "c", top_k=4, shard_size=3)
    with pytest.raises(ValueError, match="top_k: 4 -> 5"):
        cache_teacher_logits(teacher, data, output_dir=tmp_path / "c", top_k=5, shard_size=3)
    with pytest.raises(ValueError, match="built from other rows"):
        cache_teacher_logits(teacher, lm_dataset(6, seed=3), output_dir=tmp_path / "c", top_k=4, shard_size=3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a teacher cache"):
        cache_teacher_logits(teacher, data, output_dir=tmp_path / "other", top_k=4)


def test_loading_a_missing_or_incomplete_cache(teacher: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cache_teacher_logits"):
        load_teacher_cache(tmp_path)
    cache_teacher_logits(teacher, lm_dataset(6), output_dir=tmp_path, top_k=4, shard_size=3)
    (tmp_path / "shard-00001.arrow").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        load_teacher_cache(tmp_path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"top_k": 0}, "top_k=0"),
        ({"top_k": VOCAB + 1}, "exceeds the teacher's vocabulary"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"shard_size": -1}, "shard_size=-1"),
        ({"logprob_dtype": "bfloat16"}, "Valid choices"),
        ({"vocab_size": 2}, "vocab_size=2"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    teacher: nn.Module, tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cache_teacher_logits(teacher, lm_dataset(4), output_dir=tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_bad_data_and_teachers(teacher: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 'input_ids'"):
        cache_teacher_logits(teacher, Dataset.from_dict({"text": ["a"]}), output_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="empty"):
        cache_teacher_logits(teacher, lm_dataset(2).select([]), output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="one distribution per position"):
        cache_teacher_logits(tiny_bert_classifier(), lm_dataset(2), output_dir=tmp_path / "c", top_k=2)
    with pytest.raises(ValueError, match="vocab_size=200 exceeds"):
        cache_teacher_logits(teacher, lm_dataset(2), output_dir=tmp_path / "d", top_k=2, vocab_size=200)


def test_vocab_size_drops_padding_columns(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(2)
    cache = cache_teacher_logits(
        teacher, data, output_dir=tmp_path, top_k=VOCAB - 7, vocab_size=VOCAB - 7, logprob_dtype="float32"
    )
    entry = cache.dataset[0]
    assert cache.vocab_size == VOCAB - 7
    assert max(max(ids) for ids in entry["teacher_topk_ids"]) < VOCAB - 7
    assert np.isneginf(entry["teacher_residual_logprob"]).all()
    total = np.exp(np.array(entry["teacher_topk_logprobs"], dtype=np.float64)).sum(-1)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_full_cache_through_the_collator_equals_the_online_teacher(
    teacher: nn.Module, tmp_path: Path, kind: str
) -> None:
    """k = V in float32: the sparse loss on collated cache entries equals distillation_loss on live logits."""
    data = lm_dataset(6)
    cache = cache_teacher_logits(
        teacher, data, output_dir=tmp_path, top_k=VOCAB, batch_size=4, logprob_dtype="float32"
    )
    joined = with_teacher_cache(data, cache)
    batch = TeacherCacheCollator(pad_collator)([joined[i] for i in range(4)])
    student = tiny_gpt2(seed=5)
    student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:].masked_fill(~batch["teacher_cache_mask"][:, :-1], -100)
    settings = {"alpha": 0.4, "temperature": 2.0, "kind": kind}
    expected = distillation_loss(student_logits[:, :-1], teacher_logits[:, :-1], labels, **settings)
    out = sparse_distillation_loss(
        student_logits[:, :-1],
        batch["teacher_topk_ids"][:, :-1],
        batch["teacher_topk_logprobs"][:, :-1],
        batch["teacher_residual_logprob"][:, :-1],
        labels,
        **settings,
    )
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert out.kd_loss.item() == pytest.approx(expected.kd_loss.item(), rel=1e-5)


def test_collator_places_entries_at_attended_positions_with_left_padding(
    teacher: nn.Module, tmp_path: Path
) -> None:
    data = lm_dataset(3, min_len=4, max_len=8)
    cache = cache_teacher_logits(teacher, data, output_dir=tmp_path, top_k=3)
    joined = with_teacher_cache(data, cache)

    def left_pad(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_collator(rows)
        lengths = batch["attention_mask"].sum(1)
        width = batch["input_ids"].shape[1]
        for name in batch:
            batch[name] = torch.stack(
                [row.roll(int(width - n)) for row, n in zip(batch[name], lengths, strict=True)]
            )
        return batch

    batch = TeacherCacheCollator(left_pad)([joined[i] for i in range(3)])
    assert torch.equal(batch["teacher_cache_mask"], batch["attention_mask"].bool())
    for row in range(3):
        positions = batch["attention_mask"][row].nonzero().squeeze(1)
        stored = torch.tensor(np.asarray(joined[row]["teacher_topk_ids"], dtype=np.int64))
        assert torch.equal(batch["teacher_topk_ids"][row, positions], stored)
    padded = ~batch["teacher_cache_mask"]
    assert torch.isfinite(batch["teacher_topk_logprobs"][padded]).all()


def test_joining_checks_alignment(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(5)
    cache = cache_teacher_logits(teacher, data, output_dir=tmp_path, top_k=3)
    assert set(with_teacher_cache(data, str(tmp_path)).column_names) >= {"input_ids", "teacher_topk_ids"}
    with pytest.raises(ValueError, match="other tokens"):
        with_teacher_cache(data.shuffle(seed=1), cache)
    with pytest.raises(ValueError, match="4 rows but the teacher cache has 5"):
        with_teacher_cache(data.select(range(4)), cache)
    with pytest.raises(ValueError, match="already has column"):
        with_teacher_cache(with_teacher_cache(data, cache), cache)


def test_collator_refuses_missing_columns_and_truncation(teacher: nn.Module, tmp_path: Path) -> None:
    data = lm_dataset(2)
    joined = with_teacher_cache(data, cache_teacher_logits(teacher, data, output_dir=tmp_path, top_k=3))
    with pytest.raises(KeyError, match="with_teacher_cache"):
        TeacherCacheCollator(pad_collator)([data[0], data[1]])

    def truncating(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {name: value[:, :3] for name, value in pad_collator(rows).items()}

    with pytest.raises(ValueError, match="must not truncate"):
        TeacherCacheCollator(truncating)([joined[0], joined[1]])


def test_damaged_metadata_is_named_and_a_rerun_rebuilds(
    teacher: nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A metadata file cut short (an interrupted write before writes were atomic) strands no cache."""
    data = lm_dataset(6)
    cache_teacher_logits(teacher, data, output_dir=tmp_path / "c", top_k=4, shard_size=3)
    metadata = tmp_path / "c" / "teacher_cache.json"
    metadata.write_text(metadata.read_text()[:20])
    with pytest.raises(ValueError, match=r"teacher_cache\.json is damaged .* Rerun cache_teacher_logits"):
        load_teacher_cache(tmp_path / "c")
    with caplog.at_level("WARNING"):
        rebuilt = cache_teacher_logits(teacher, data, output_dir=tmp_path / "c", top_k=4, shard_size=3)
    assert "rebuilt from scratch" in caplog.text
    fresh = cache_teacher_logits(teacher, data, output_dir=tmp_path / "fresh", top_k=4, shard_size=3)
    assert rebuilt.dataset.to_dict() == fresh.dataset.to_dict()
    assert load_teacher_cache(tmp_path / "c").num_tokens == fresh.num_tokens
