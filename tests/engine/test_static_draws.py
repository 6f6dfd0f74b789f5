"""draws="static" (issue 23): host-drawn levels, sub-batches padded to bucket sizes, no device read per call.

Checked as mathematics (fixed seeds; statistical tolerances are 5 standard errors, see conftest): every row
fires with probability p, each row's estimate is unbiased, and the draws are per-sample draws' (the same
numbers for the same CPU generator); checked structurally: a level only ever sees the bucket sizes.
"""

import math

import pytest
import torch
from conftest import three_level_ladder

from multilevel_em import Ladder, solve
from multilevel_em.engine import LevelEvaluator, bucket_sizes, sample_generators, telescoping_estimate
from multilevel_em.engine.buckets import next_bucket
from multilevel_em.engine.solver import _ALL, _host_generators, _Padded, _plan_static

B = 10
P = (0.37, 0.12, 0.05)


class Sizes:
    """A level that records the batch sizes it is called with."""

    def __init__(self, f):
        self.f, self.sizes = f, []

    def __call__(self, x, t):
        self.sizes.append(x.shape[0])
        return self.f(x, t)


def _affine_levels():
    # f^l(x) = a_l x + c_l: distinct affine levels, so every correction is a nonzero, row-dependent term.
    a, c = (1.0, 1.5, 1.75, 1.8), (0.0, 0.3, -0.2, 0.5)
    return Ladder([lambda x, t, a=a_, c=c_: a * x + c for a_, c_ in zip(a, c)], [1, 2, 4, 8]), a[-1], c[-1]


def test_bucket_sizes_default_and_given():
    assert bucket_sizes(256) == (2, 4, 8, 16, 32, 64, 128, 256)  # 8 sizes: torch.compile's recompile limit
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    assert bucket_sizes(1) == (1,) and bucket_sizes(0) == ()
    assert bucket_sizes(10, [16, 4, 4, 2]) == (2, 4, 10)  # sizes >= the batch give way to the batch itself
    assert [next_bucket(m, bucket_sizes(10, [2, 4])) for m in (1, 2, 3, 5, 10)] == [2, 2, 4, 10, 10]
    for bad in ([], [0], [2.5], ["2"], 3):
        with pytest.raises(ValueError, match="buckets"):
            bucket_sizes(10, bad)


def test_static_plan_fires_each_row_with_probability_p_and_pads_to_buckets():
    steps, sizes = 10000, bucket_sizes(B, [2, 4])
    plan = _plan_static([list(P)] * steps, B, torch.Generator().manual_seed(0), torch.device("cpu"), sizes)
    seen = set()
    for k, p in enumerate(P):
        rows = torch.zeros(steps, B)
        for n in range(steps):
            fired, needed = plan[n]
            f = fired[k]
            if f is _ALL:
                rows[n] = 1
            elif f is not None:
                assert isinstance(f, _Padded) and f.index.shape[0] == next_bucket(f.count, sizes)
                assert torch.equal(f.index[f.count :], f.rows[-1:].expand(f.index.shape[0] - f.count))
                assert bool((f.rows[1:] > f.rows[:-1]).all())  # the rows themselves: distinct, increasing
                rows[n, f.rows] = 1
                seen.add(f.index.shape[0])
        # Marginal rate per row: p within 5 binomial standard errors (each row's steps are independent).
        se = math.sqrt(p * (1 - p) / steps)
        assert (rows.mean(0) - p).abs().max().item() < 5 * se
    assert seen <= set(sizes)


def test_static_draws_are_per_sample_draws_padded():
    # Same CPU generator: the same draws, so the same estimate (these levels are elementwise: bit-equal);
    # the counted evaluations differ only by the padding.
    ladder = three_level_ladder()
    x0 = torch.randn(37, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(t0=0.0, t1=1.0, steps=50, rates=[10.0, 4.0], diffusion=0.3)
    a = solve(ladder, x0, generator=torch.Generator().manual_seed(1), draws="per_sample", **kw)
    b = solve(ladder, x0, generator=torch.Generator().manual_seed(1), draws="static", **kw)
    torch.testing.assert_close(b.x, a.x, rtol=0, atol=0)
    assert b.evaluations[0] == a.evaluations[0] and all(e_b >= e_a for e_a, e_b in zip(a.evaluations, b.evaluations))
    gens = lambda: sample_generators(3, range(37))
    call = LevelEvaluator(ladder, x0)
    e_a = telescoping_estimate(call, x0, 0.3, [0.3, 0.1], draws="per_sample", generator=gens())
    e_b = telescoping_estimate(call, x0, 0.3, [0.3, 0.1], draws="static", generator=gens())
    torch.testing.assert_close(e_b, e_a, rtol=0, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_static_estimate_is_unbiased_per_row(per_sample):
    ladder, a_top, c_top = _affine_levels()
    x = torch.linspace(-1, 1, B, dtype=torch.float64).unsqueeze(1)
    gen = sample_generators(1, range(B)) if per_sample else torch.Generator().manual_seed(1)
    call = LevelEvaluator(ladder, x)
    n = 3000
    est = torch.stack(
        [telescoping_estimate(call, x, 0.5, P, draws="static", generator=gen, buckets=[1, 4]) for _ in range(n)]
    )
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    truth = a_top * x + c_top
    assert ((mean - truth).abs() < 5 * se).all(), ((mean - truth) / se).squeeze()


def test_solve_static_is_unbiased_for_one_step():
    # One EM step from x0 without noise: X_1 = x0 + h F_0, so E[X_1] = x0 + h f^K(x0) row by row.
    ladder, a_top, c_top = _affine_levels()
    x0 = torch.linspace(-1, 1, B, dtype=torch.float64).unsqueeze(1)
    h = 0.5
    rates = [p / h for p in P]  # p = lambda h
    gen = torch.Generator().manual_seed(2)
    kw = dict(t0=0.0, t1=h, steps=1, rates=rates, draws="static", buckets=[2, 4], generator=gen)
    xs = torch.stack([solve(ladder, x0, **kw).x for _ in range(3000)])
    truth = x0 + h * (a_top * x0 + c_top)
    mean, se = xs.mean(0), xs.std(0) / math.sqrt(xs.shape[0])
    assert ((mean - truth).abs() < 5 * se).all(), ((mean - truth) / se).squeeze()


def test_levels_only_see_bucket_sizes():
    f = three_level_ladder()
    levels = [Sizes(g) for g in f]
    x0 = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    solve(
        Ladder(levels, f.costs),
        x0,
        t0=0.0,
        t1=1.0,
        steps=200,
        rates=[30.0, 5.0],
        diffusion=0.2,
        draws="static",
        buckets=[4, 16],
        generator=torch.Generator().manual_seed(0),
    )
    for lv in levels[1:]:
        assert lv.sizes and set(lv.sizes) <= {4, 16, 50}, sorted(set(lv.sizes))
    assert set(levels[0].sizes) == {50}
    # the default buckets: powers of two and the batch
    levels = [Sizes(g) for g in f]
    solve(Ladder(levels, f.costs), x0, t0=0.0, t1=1.0, steps=100, rates=[30.0, 5.0], draws="static")
    assert set().union(*(lv.sizes for lv in levels)) <= set(bucket_sizes(50))


def test_static_argument_errors():
    ladder = three_level_ladder()
    x0 = torch.zeros(4, 1)
    kw = dict(t0=0.0, t1=1.0, steps=2, rates=[1.0, 1.0])
    with pytest.raises(ValueError, match="buckets: only draws='static'"):
        solve(ladder, x0, draws="per_sample", buckets=[2], **kw)
    with pytest.raises(ValueError, match="buckets: expected a non-empty sequence"):
        solve(ladder, x0, draws="static", buckets=[0, 2], **kw)
    with pytest.raises(ValueError, match="buckets: expected a non-empty sequence"):
        telescoping_estimate(LevelEvaluator(ladder, x0), x0, 0.1, [0.5, 0.5], draws="static", buckets="2")

    class OnCuda:  # stands for a CUDA generator (none on this machine): static draws need a host one
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="CPU torch.Generator"):
        _host_generators(OnCuda())
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        _host_generators([torch.Generator(), OnCuda()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the sync check needs a CUDA device")
def test_static_estimate_makes_no_host_sync_on_cuda():
    ladder = three_level_ladder()
    x = torch.randn(64, 3, device="cuda")
    call = LevelEvaluator(ladder, x)
    gen = torch.Generator().manual_seed(0)
    telescoping_estimate(call, x, 0.2, [0.3, 0.1], draws="static", generator=gen, check_finite=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            telescoping_estimate(call, x, 0.2, [0.3, 0.1], draws="static", generator=gen, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
