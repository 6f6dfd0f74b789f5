"""draws="exact" (issue 13): per step and level, floor(p B) + Bernoulli(frac(p B)) rows fire, chosen at random.

Checked as mathematics: every row fires with probability p (the marginal law of independent
draws), the count per step is floor(p B) or floor(p B) + 1 with mean p B, and each row's
telescoping estimate stays unbiased.  Fixed seeds; tolerances are 5 standard errors.
"""

import math

import pytest
import torch

from multilevel_em import Ladder, solve
from multilevel_em.diffusion import MultilevelDenoiser
from multilevel_em.engine import LevelEvaluator, sample_generators, telescoping_estimate
from multilevel_em.engine.solver import _ALL, _plan_draws

B = 10
P = (0.37, 0.12, 0.05)


def _fired_counts(plan, level: int, batch: int) -> torch.Tensor:
    """(steps, batch) 0/1: whether correction ``level`` (0-based among 2..K) fired on each row."""
    rows = torch.zeros(len(plan), batch)
    for n, (fired, _) in enumerate(plan):
        f = fired[level]
        if f is _ALL:
            rows[n] = 1
        elif f is not None:
            rows[n, f] = 1
    return rows


def test_exact_draws_marginal_rate_and_counts():
    steps = 20000
    plan = _plan_draws([list(P)] * steps, B, "exact", torch.Generator().manual_seed(0), torch.device("cpu"))
    for k, p in enumerate(P):
        rows = _fired_counts(plan, k, B)
        counts = rows.sum(1)
        # The count is floor(pB) or floor(pB) + 1 on every step: fewer distinct sub-batch sizes.
        assert set(counts.tolist()) <= {math.floor(p * B), math.floor(p * B) + 1}
        # Mean count p B: each step's count is a Bernoulli shifted by floor(pB), sd <= 1/2.
        frac = p * B - math.floor(p * B)
        se_count = math.sqrt(frac * (1 - frac) / steps)
        assert abs(counts.mean().item() - p * B) < 5 * se_count
        # Marginal rate per row: p within 5 binomial standard errors (rows are not independent
        # of each other, but each row's steps are).
        rate = rows.mean(0)
        se = math.sqrt(p * (1 - p) / steps)
        assert (rate - p).abs().max().item() < 5 * se, rate


def test_exact_draws_need_a_shared_generator():
    gens = sample_generators(0, range(B))
    with pytest.raises(ValueError, match="exact.*per-sample generators"):
        _plan_draws([list(P)], B, "exact", gens, torch.device("cpu"))
    with pytest.raises(ValueError, match="per-sample generators needs draws='per_sample'"):
        MultilevelDenoiser([lambda x, t: x] * 4, costs=[1, 2, 3, 4], rates=[1, 1, 1], draws="exact", generator=gens)
    with pytest.raises(ValueError, match="draws"):
        solve(
            Ladder([lambda x, t: x] * 2, [1, 2]), torch.zeros(2, 1), t0=0, t1=1, steps=2, rates=[1.0], draws="exactly"
        )


def _levels():
    # f^l(x) = a_l x + c_l: distinct affine levels, so every correction is a nonzero, row-dependent term.
    a, c = (1.0, 1.5, 1.75, 1.8), (0.0, 0.3, -0.2, 0.5)
    return Ladder([lambda x, t, a=a_, c=c_: a * x + c for a_, c_ in zip(a, c)], [1, 2, 4, 8]), a[-1], c[-1]


def test_exact_draws_estimate_is_unbiased_per_row():
    ladder, a_top, c_top = _levels()
    x = torch.linspace(-1, 1, B, dtype=torch.float64).unsqueeze(1)
    gen = torch.Generator().manual_seed(1)
    call = LevelEvaluator(ladder, x)
    n = 6000
    est = torch.stack([telescoping_estimate(call, x, 0.5, P, draws="exact", generator=gen) for _ in range(n)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    truth = a_top * x + c_top
    assert ((mean - truth).abs() < 5 * se).all(), ((mean - truth) / se).squeeze()
    # Cost: level 1 on every row, level l on the rows where correction l or l + 1 fired; the top
    # level on exactly the fired rows, p_K B on average.
    assert call.evaluations[0] == n * B
    assert abs(call.evaluations[3] / n - P[2] * B) < 5 * math.sqrt(P[2] * B * (1 - P[2] * B) / n)


def test_solve_with_exact_draws_matches_em_in_mean():
    # An ODE with affine levels f^l(x) = a_l x + c_l: ML-EM's mean over independent
    # solves must match EM with the top level (the estimate is unbiased at each step and the levels
    # are affine, so the mean path is exactly EM's).
    ladder, _, _ = _levels()
    x0 = torch.full((64, 1), 0.5, dtype=torch.float64)
    em = solve(ladder, x0, t0=0.0, t1=0.5, steps=8, method="em").x
    runs = torch.cat(
        [
            solve(
                ladder,
                x0,
                t0=0.0,
                t1=0.5,
                steps=8,
                rates=[8 * p for p in P],
                draws="exact",
                generator=torch.Generator().manual_seed(s),
            ).x
            for s in range(20)
        ]
    )
    se = runs.std() / math.sqrt(runs.shape[0])
    assert abs(runs.mean() - em[0, 0]) < 5 * se
