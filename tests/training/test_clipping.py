"""AdaptiveGradClip against reference computations: numpy percentiles, torch's clip_grad_norm_, ZClip's equations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_enhance.training import AdaptiveGradClip


def _params_with_grads(norms: list[float], seed: int = 0) -> list[list[torch.nn.Parameter]]:
    """One set of two parameters per step, whose gradients have the given global L2 norm."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for norm in norms:
        params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        scale = norm / torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
        for p, g in zip(params, grads, strict=True):
            p.grad = g * scale
        steps.append(params)
    return steps


def _norm_sequence(n: int = 60, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    norms = list(rng.lognormal(mean=0.0, sigma=0.3, size=n))
    for spike in (n // 2, 3 * n // 4):
        norms[spike] *= 20.0
    return norms


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0, 100.0])
@pytest.mark.parametrize("history_size", [None, 7])
def test_autoclip_matches_paper_reference(percentile: float, history_size: int | None) -> None:
    norms = _norm_sequence()
    ours, ref = _params_with_grads(norms), _params_with_grads(norms)
    clipper = AdaptiveGradClip("autoclip", percentile=percentile, history_size=history_size)
    history: list[float] = []
    for params, ref_params in zip(ours, ref, strict=True):
        threshold = clipper.clip_(params)
        # AutoClip as published: append the norm, clip at the percentile of the history.
        ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref_params]).item()
        history.append(ref_norm)
        window = history if history_size is None else history[-history_size:]
        expected = float(np.percentile(window, percentile))
        torch.nn.utils.clip_grad_norm_(ref_params, expected)
        assert threshold == pytest.approx(expected, rel=1e-9)
        for p, r in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p.grad, r.grad)


def _zclip_reference(norms: list[float], alpha: float, z_thresh: float, warmup: int) -> list[float]:
    """The clipped norm per step, following Kumar et al. 2025 (Algorithm 1, reciprocal clipping)."""
    out, buffer, mean, var = [], [], None, None
    for g in norms:
        if mean is None:
            buffer.append(g)
            if len(buffer) == warmup:
                mean, var = float(np.mean(buffer)), float(np.var(buffer))
            out.append(g)
            continue
        std = math.sqrt(var)
        z = (g - mean) / (std + 1e-6)
        g_eff = mean + z_thresh**2 / z * std if z > z_thresh else g
        mean = alpha * mean + (1 - alpha) * g_eff
        var = alpha * var + (1 - alpha) * (g_eff - mean) ** 2
        out.append(g_eff)
    return out


@pytest.mark.parametrize(("alpha", "z_thresh", "warmup"), [(0.97, 2.5, 25), (0.9, 2.0, 5)])
def test_zclip_matches_reference(alpha: float, z_thresh: float, warmup: int) -> None:
    norms = _norm_sequence()
    expected = _zclip_reference(norms, alpha, z_thresh, warmup)
    clipper = AdaptiveGradClip("zclip", alpha=alpha, z_threshold=z_thresh, warmup_steps=warmup)
    for params, norm, clipped in zip(_params_with_grads(norms), norms, expected, strict=True):
        ref = [p.detach().clone() for p in params]
        for r, p in zip(ref, params, strict=True):
            r.grad = p.grad.clone()
        threshold = clipper.clip_(params)
        after = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
        assert after == pytest.approx(clipped, rel=1e-5)
        assert (norm > threshold) == (clipped < norm)
        if clipped < norm:  # scaled exactly like torch's clip_grad_norm_ at that threshold
            torch.nn.utils.clip_grad_norm_(ref, threshold)
            for p, r in zip(params, ref, strict=True):
                torch.testing.assert_close(p.grad, r.grad)


def test_zclip_clips_spikes_only() -> None:
    norms = [1.0 + 0.01 * (i % 5) for i in range(40)]
    norms[35] = 50.0
    clipper = AdaptiveGradClip("zclip", warmup_steps=10)
    clipped = [
        norm > clipper.clip_(params) for params, norm in zip(_params_with_grads(norms), norms, strict=True)
    ]
    assert clipped == [i == 35 for i in range(40)]


def test_warmup_and_ceiling() -> None:
    clipper = AdaptiveGradClip("zclip", warmup_steps=3)
    assert clipper.update(1.0) == math.inf  # nothing is clipped while the statistics warm up
    capped = AdaptiveGradClip("autoclip", percentile=100.0, max_norm=0.5)
    (params,) = _params_with_grads([2.0])
    assert capped.clip_(params) == 0.5
    assert torch.nn.utils.get_total_norm([p.grad for p in params]).item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("method", ["autoclip", "zclip"])
def test_nonfinite_norm_is_not_recorded_and_grads_untouched(method: str) -> None:
    clipper = AdaptiveGradClip(method, warmup_steps=2)
    for norm in (1.0, 1.2, 0.9):
        clipper.update(norm)
    before = json.dumps(clipper.state_dict())
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([float("nan"), 1.0])
    clipper.clip_([param])
    assert json.dumps(clipper.state_dict()) == before
    assert param.grad[1].item() == 1.0


@pytest.mark.parametrize(("method", "history_size"), [("autoclip", None), ("autoclip", 5), ("zclip", None)])
def test_state_dict_round_trip_continues_identically(method: str, history_size: int | None) -> None:
    norms = _norm_sequence(40)
    whole = AdaptiveGradClip(method, history_size=history_size, warmup_steps=10)
    first = AdaptiveGradClip(method, history_size=history_size, warmup_steps=10)
    expected = [whole.update(n) for n in norms]
    got = [first.update(n) for n in norms[:20]]
    resumed = AdaptiveGradClip(method, history_size=history_size, warmup_steps=10)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [resumed.update(n) for n in norms[20:]]
    assert got == pytest.approx(expected, rel=1e-12)


def test_load_state_of_other_method_fails() -> None:
    with pytest.raises(ValueError, match="same mode"):
        AdaptiveGradClip("zclip").load_state_dict(AdaptiveGradClip("autoclip").state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "adaptive"}, "Valid choices: autoclip, zclip"),
        ({"percentile": 0.0}, r"percentile must be in \(0, 100\]"),
        ({"percentile": 101.0}, r"percentile must be in \(0, 100\]"),
        ({"history_size": 0}, "history_size"),
        ({"z_threshold": 0.0}, "z_threshold"),
        ({"alpha": 1.0}, "alpha"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"max_norm": -1.0}, "max_norm"),
    ],
)
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveGradClip(**kwargs)
