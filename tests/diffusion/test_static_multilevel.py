"""draws="static" in MultilevelDenoiser and MultilevelModel (issue 23): unbiased per row, guidance pairs sharing
their draws, levels seeing only bucket sizes, and what static draws cost against per-sample draws.

Statistical tolerances are 5 standard errors with fixed seeds (see conftest).
"""

from __future__ import annotations

import math

import pytest
import torch

from multilevel_em.diffusion import MultilevelDenoiser, MultilevelModel
from multilevel_em.engine import bucket_sizes, sample_generators

A, C = (1.0, 1.4, 1.6), (0.0, 0.25, -0.15)  # f^l = A_l x + C_l (t): distinct affine levels
P = (0.35, 0.15)


def _eps_levels():
    return [
        lambda x, t, a=a, c=c: a * x + c * (1 + (t if not isinstance(t, torch.Tensor) else t.view(-1, 1)))
        for a, c in zip(A, C)
    ]


class Recorder:
    """A diffusers-like model f(sample, timestep, encoder_hidden_states) = a sample + c mean(emb), recording
    each call's sample."""

    def __init__(self, a, c):
        self.a, self.c, self.samples = a, c, []

    def __call__(self, sample, timestep, encoder_hidden_states=None, return_dict=True):
        self.samples.append(sample)
        e = encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)
        out = self.a * sample + self.c * e
        return out if return_dict else (out,)


def test_multilevel_denoiser_static_is_unbiased_per_row():
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).unsqueeze(1)
    h, t = 0.1, 0.5
    den = MultilevelDenoiser(
        _eps_levels(),
        costs=[1, 2, 4],
        rates=[p / h for p in P],
        draws="static",
        buckets=[2, 4],
        generator=torch.Generator().manual_seed(0),
    )
    den.set_step(h)
    n = 3000
    est = torch.stack([den(x, t) for _ in range(n)])
    truth = A[-1] * x + C[-1] * (1 + t)
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    assert ((mean - truth).abs() < 5 * se).all(), ((mean - truth) / se).squeeze()


def test_multilevel_denoiser_static_equals_per_sample_for_the_same_generators():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = {}
    for draws in ("per_sample", "static"):
        den = MultilevelDenoiser(
            _eps_levels(), costs=[1, 2, 4], rates=[3.0, 1.0], draws=draws, generator=sample_generators(5, range(9))
        )
        den.set_step(0.1)
        outs[draws] = torch.stack([den(x, 0.3) for _ in range(20)])
    torch.testing.assert_close(outs["static"], outs["per_sample"], rtol=0, atol=0)


def _pairs(n_img: int, reps: int, seed: int):
    """CFG rows: [uncond; cond] of n_img * reps images (image i's latent distinct, repeated reps times)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_img, 1, 2, 2, generator=g, dtype=torch.float64).repeat(reps, 1, 1, 1)
    cond = torch.randn(n_img, 3, 4, generator=g, dtype=torch.float64).repeat(reps, 1, 1)
    uncond = torch.zeros_like(cond)
    return torch.cat([x, x]), torch.cat([uncond, cond])


def test_multilevel_model_static_is_unbiased_with_guidance_pairs():
    n_img, reps = 3, 400
    xs, emb = _pairs(n_img, reps, 0)
    levels = [Recorder(a, c) for a, c in zip(A, C)]
    mm = MultilevelModel(
        levels,
        costs=[1, 2, 4],
        probabilities=list(P),
        draws="static",
        buckets=[64, 256],
        pair_guidance=True,
        generator=torch.Generator().manual_seed(3),
    )
    calls = 8
    with torch.no_grad():
        est = torch.stack(
            [mm(xs, torch.tensor(500), encoder_hidden_states=emb, return_dict=False)[0] for _ in range(calls)]
        )
    images = n_img * reps
    # Each (call, replicate) is one independent draw of image i's estimate (both halves): the mean over them
    # is within 5 standard errors of the top model's output, row by row.
    y = est.view(calls, 2, reps, n_img, -1).transpose(1, 2).reshape(calls * reps, 2, n_img, -1)
    truth = Recorder(A[-1], C[-1])(xs, None, encoder_hidden_states=emb).view(2, reps, n_img, -1)[:, 0]
    mean, se = y.mean(0), y.std(0) / math.sqrt(y.shape[0])
    assert ((mean - truth).abs() < 5 * se.clamp_min(1e-12)).all()
    # Guidance pairs share their draws: a level's rows are whole pairs (both halves hold the same images, in
    # order) and its batch is twice a bucket size of images.
    sizes = {2 * s for s in bucket_sizes(images, [64, 256])}
    for lv in levels[1:]:
        assert len(lv.samples) > 1
        for s in lv.samples[1:]:  # the first: the first call's probe of every level on one pair
            m = s.shape[0] // 2
            assert s.shape[0] in sizes and torch.equal(s[:m], s[m:])
    # and so the guided difference cond - uncond has the top model's guidance term in every draw whose
    # corrections fired alike: with shared draws, (cond - uncond) = sum_l w_l (c_l - c_{l-1}) mean(emb) exactly
    d = (y[:, 1] - y[:, 0]).reshape(calls * reps, n_img, -1)
    e = emb.mean((1, 2)).view(2, reps, n_img)[1, 0]
    ratio = d / e.view(1, n_img, 1)  # the same scalar over each image's elements when the halves share draws
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-9, atol=1e-9)


def test_multilevel_model_static_with_per_image_generators_and_errors():
    xs, emb = _pairs(2, 1, 1)
    gens = sample_generators(0, range(2))  # one per image (pairs): static draws per image, as per-sample ones
    outs = {}
    for draws in ("per_sample", "static"):
        mm = MultilevelModel(
            [Recorder(a, c) for a, c in zip(A, C)],
            costs=[1, 2, 4],
            probabilities=[0.5, 0.5],
            draws=draws,
            generator=sample_generators(0, range(2)),
        )
        outs[draws] = torch.stack([mm(xs, 10, encoder_hidden_states=emb, return_dict=False)[0] for _ in range(10)])
    torch.testing.assert_close(outs["static"], outs["per_sample"], rtol=0, atol=0)
    assert gens
    with pytest.raises(ValueError, match="buckets: only draws='static'"):
        MultilevelModel([Recorder(1, 0), Recorder(2, 0)], costs=[1, 2], draws="shared", buckets=[2])
    with pytest.raises(ValueError, match="draws: expected"):
        MultilevelModel([Recorder(1, 0), Recorder(2, 0)], costs=[1, 2], draws="exact")
    with pytest.raises(ValueError, match="compile: a compiled model needs"):
        MultilevelModel([Recorder(1, 0), Recorder(2, 0)], costs=[1, 2], compile=True)
    with pytest.raises(ValueError, match="compile: a compiled level needs"):
        MultilevelDenoiser(_eps_levels(), costs=[1, 2, 4], rates=[1, 1], compile=True)
    with pytest.raises(ValueError, match="buckets"):
        MultilevelDenoiser(_eps_levels(), costs=[1, 2, 4], rates=[1, 1], draws="static", buckets=[0])


def test_static_draws_cost_no_variance_against_per_sample_draws():
    """The variance of one denoiser call's estimate per row, static over per-sample draws (independent seeds),
    and the rows the padding adds: printed for docs/method.md ("Static draws").  Static draws have per-sample
    draws' law, so the ratio is 1 up to sampling noise: asserted within 5 standard errors of log(ratio)
    (sd of a log sample variance of n normal-ish draws ~ sqrt(2 / (n - 1)); pooled over rows below)."""
    B, n = 64, 1500
    x = torch.randn(B, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    var, rows = {}, {}
    for draws, seed in (("per_sample", 1), ("static", 2)):
        den = MultilevelDenoiser(
            _eps_levels(),
            costs=[1, 2, 4],
            rates=[p / 0.1 for p in P],
            draws=draws,
            generator=torch.Generator().manual_seed(seed),
        )
        den.set_step(0.1)
        est = torch.stack([den(x, 0.5) for _ in range(n)])
        var[draws] = est.var(0).sum(1)  # per row, summed over its 4 coordinates
        rows[draws] = den.evaluations
    log_ratio = (var["static"] / var["per_sample"]).log()
    # rows are independent given x: the mean of B log-ratios has sd ~ sqrt(2 * 2 / (n - 1) / B) (two
    # variances, each log ~ sqrt(2 / (n - 1)); the 4 coordinates of a row are one draw, so no sqrt(4) credit)
    se = math.sqrt(4 / (n - 1) / B)
    ratio = math.exp(float(log_ratio.mean()))
    padding = [s / p for s, p in zip(rows["static"][1:], rows["per_sample"][1:])]
    print(
        f"static / per-sample variance per row: {ratio:.4f} (5 SE: {5 * se:.3f}); rows evaluated, levels 2-3, "
        f"static / per-sample: {padding[0]:.3f}, {padding[1]:.3f} (B={B}, p={P}, default buckets)"
    )
    assert abs(float(log_ratio.mean())) < 5 * se
