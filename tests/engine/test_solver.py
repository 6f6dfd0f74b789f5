"""EM and ML-EM: unbiasedness, agreement with EM and torchsde, convergence, cost accounting,
determinism and the output format.

Statistical checks use fixed seeds and 5-standard-error tolerances (a correct engine fails a
single such check with probability about 6e-7); exact checks use float64 and tolerances of
1e-12 (rounding) or 1e-8 (comparison with an external solver).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F64, Counting, fit_slope, rms, three_level_ladder, wiggle_levels

from multilevel_em.engine import BrownianPath, Ladder, solve

ROUND = 1e-12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- unbiasedness

H = 0.1
RATES = [3.0, 1.0]  # p = lambda * h = 0.3 for level 2 and 0.1 for level 3
P2, P3 = min(1.0, RATES[0] * H), min(1.0, RATES[1] * H)
STATE = torch.tensor([0.7, -0.4], dtype=F64)


def _one_step_drift(ladder, x0, draws, generator):
    sol = solve(ladder, x0, t0=0.0, t1=H, steps=1, method="mlem", rates=RATES, draws=draws, generator=generator)
    return (sol.x - x0) / H, sol


def _drift_samples(draws: str, n: int) -> torch.Tensor:
    L = three_level_ladder()
    if draws == "per_sample":
        x0 = STATE.expand(n, 2).clone()
        D, sol = _one_step_drift(L, x0, draws, _gen(0))
        assert sol.probabilities == [[P2, P3]]
        return D
    # Shared draws: one Bernoulli draw per step for the whole batch, so repeat the solve with
    # different generator seeds; within each batch all samples must get the same estimate.
    rows = []
    x0 = STATE.expand(3, 2).clone()
    for seed in range(n):
        D, _ = _one_step_drift(L, x0, draws, _gen(seed))
        assert torch.equal(D[0], D[1]) and torch.equal(D[0], D[2]), "shared draws differ within a batch"
        rows.append(D[0])
    return torch.stack(rows)


@pytest.mark.parametrize("draws,n", [("per_sample", 20000), ("shared", 4000)])
def test_mlem_drift_is_unbiased_for_the_top_level(draws, n):
    L = three_level_ladder()
    D = _drift_samples(draws, n)
    levels = [L[j](STATE[None], 0.0)[0] for j in range(3)]
    mean, se = D.mean(0), D.std(0) / math.sqrt(n)
    z = (mean - levels[2]) / se
    assert bool((z.abs() < 5).all()), f"mean drift {mean.tolist()} vs f^3 {levels[2].tolist()}: z = {z.tolist()}"
    # The test has power: the estimate is clearly not centred on the lower levels.
    for j in (0, 1):
        zj = (mean - levels[j]) / se
        assert bool((zj.abs() > 5).any()), f"cannot tell the estimate from level {j + 1}"


@pytest.mark.parametrize("draws,n", [("per_sample", 20000), ("shared", 4000)])
def test_mlem_drift_takes_the_four_telescoping_values_with_bernoulli_frequencies(draws, n):
    """F = f^1 + B2/p2 (f^2 - f^1) + B3/p3 (f^3 - f^2) with independent B2 ~ Bern(0.3), B3 ~ Bern(0.1)."""
    L = three_level_ladder()
    D = _drift_samples(draws, n)
    f1, f2, f3 = (L[j](STATE[None], 0.0)[0] for j in range(3))
    d2, d3 = (f2 - f1) / P2, (f3 - f2) / P3
    combos = {(0, 0): f1, (1, 0): f1 + d2, (0, 1): f1 + d3, (1, 1): f1 + d2 + d3}
    counts = dict.fromkeys(combos, 0)
    for row in D:
        hits = [k for k, v in combos.items() if float((row - v).abs().max()) < 1e-9]
        assert len(hits) == 1, f"drift estimate {row.tolist()} is not one of the telescoping values"
        counts[hits[0]] += 1
    for (b2, b3), c in counts.items():
        q = (P2 if b2 else 1 - P2) * (P3 if b3 else 1 - P3)
        se = math.sqrt(n * q * (1 - q))
        assert abs(c - n * q) < 5 * se, f"B2={b2}, B3={b3}: {c} of {n}, expected {n * q:.0f} +- {se:.0f}"


def test_per_sample_corrections_land_on_the_right_rows():
    """Distinct states per row: each row's estimate must be a telescoping value of *its own*
    state (a gather/scatter mix-up between rows would break this)."""
    L = three_level_ladder()
    n = 4000
    x0 = torch.stack([torch.linspace(-2.0, 2.0, n, dtype=F64), torch.linspace(1.5, -1.0, n, dtype=F64)], 1)
    D, _ = _one_step_drift(L, x0, "per_sample", _gen(3))
    f1, f2, f3 = (L[j](x0, 0.0) for j in range(3))
    d2, d3 = (f2 - f1) / P2, (f3 - f2) / P3
    cands = torch.stack([f1, f1 + d2, f1 + d3, f1 + d2 + d3])  # (4, n, 2)
    err = (D[None] - cands).abs().amax(2)  # (4, n)
    best = err.min(0)
    assert float(best.values.max()) < 1e-9, "some row's estimate is not built from its own state's levels"
    fired3 = (best.indices >= 2).double().mean().item()
    # Fraction with level 3 fired: p3 = 0.1, SE sqrt(p(1-p)/n) ~ 0.0047; tolerance 5 SE.
    assert abs(fired3 - P3) < 5 * math.sqrt(P3 * (1 - P3) / n)


# ----------------------------------------------------------------------------- ML-EM vs EM


@pytest.mark.parametrize("draws", ["per_sample", "shared"])
@pytest.mark.parametrize("rates", [[1e9, 1e9], [64.0, 64.0]], ids=["huge", "lambda_h_is_1"])
def test_mlem_with_all_probabilities_one_equals_em_with_the_top_level(draws, rates):
    L = three_level_ladder()
    x0 = torch.randn(32, 2, generator=_gen(1), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=2, dtype=F64)
    steps = 64
    em = solve(L, x0, t0=0.0, t1=1.0, steps=steps, diffusion=0.5, method="em", noise=W)
    ml = solve(
        L,
        x0,
        t0=0.0,
        t1=1.0,
        steps=steps,
        diffusion=0.5,
        method="mlem",
        rates=rates,
        noise=W,
        draws=draws,
        generator=_gen(3),
    )
    assert all(p == [1.0, 1.0] for p in ml.probabilities)
    err = float((ml.x - em.x).abs().max())
    assert err < ROUND, f"ML-EM with p = 1 differs from EM with the top level by {err:.3g}"
    # Cost sharing: every level exactly once per sample per step (level 2 is shared by both
    # corrections but paid once).
    assert ml.evaluations == (steps * 32,) * 3


def test_mlem_with_one_level_is_em():
    f = lambda x, t: -x + torch.sin(x + t)
    L = Ladder([f], [2.0])
    x0 = torch.randn(16, 3, generator=_gen(0), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 2.0, seed=1, dtype=F64)
    a = solve(L, x0, t0=0.0, t1=2.0, steps=40, diffusion=0.3, method="em", noise=W)
    b = solve(L, x0, t0=0.0, t1=2.0, steps=40, diffusion=0.3, method="mlem", noise=W)
    assert torch.equal(a.x, b.x)
    assert a.evaluations == b.evaluations == (40 * 16,)


def test_em_uses_the_requested_level():
    L = Ladder([lambda x, t: -x, lambda x, t: -2 * x], [1.0, 3.0])
    x0 = torch.ones(4, 1, dtype=F64)
    s0 = solve(L, x0, t0=0.0, t1=1.0, steps=10, method="em", level=0)
    s1 = solve(L, x0, t0=0.0, t1=1.0, steps=10, method="em", level=-1)
    assert torch.allclose(s0.x, torch.full_like(x0, 0.9**10), rtol=ROUND, atol=0)
    assert torch.allclose(s1.x, torch.full_like(x0, 0.8**10), rtol=ROUND, atol=0)
    assert s0.evaluations == (40, 0) and s1.evaluations == (0, 40)


# ----------------------------------------------------------------------------- EM, exactly


def test_em_on_a_linear_ode_is_the_geometric_sequence():
    L = Ladder([lambda x, t: -x], [1.0])
    x0 = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    s = solve(L, x0, t0=1.0, t1=3.0, steps=50, method="em")
    assert torch.allclose(s.x, x0 * (1 - 2.0 / 50) ** 50, rtol=ROUND, atol=ROUND)


def test_em_evaluates_drift_and_diffusion_at_the_left_end_of_each_step():
    """x' = t dt + t dW from x = 0: EM gives sum_n t_n h + sum_n t_n (W(t_{n+1}) - W(t_n))."""
    t0, t1, steps = 0.5, 1.5, 20
    L = Ladder([lambda x, t: torch.full_like(x, t)], [1.0])
    x0 = torch.zeros(8, 1, dtype=F64)
    W = BrownianPath(x0.shape, t0, t1, seed=4, dtype=F64)
    s = solve(L, x0, t0=t0, t1=t1, steps=steps, diffusion=lambda t: t, method="em", noise=W)
    h = (t1 - t0) / steps
    ts = [t0 + n * h for n in range(steps)] + [t1]
    expect = sum(ts[n] * h + ts[n] * W.increment(ts[n], ts[n + 1]) for n in range(steps))
    assert torch.allclose(s.x, expect, rtol=0, atol=ROUND)


def _wrap_for_torchsde(path: BrownianPath):
    """Our BrownianPath seen through torchsde's Brownian interface (BaseBrownian)."""
    torchsde = pytest.importorskip("torchsde")

    class PathBM(torchsde.BaseBrownian):
        __slots__ = ("path",)

        def __init__(self, path):
            self.path = path

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            if return_U or return_A:
                raise NotImplementedError("no Levy area")
            if tb is None:
                return self.path.value(float(ta))
            return self.path.increment(float(ta), float(tb))

        def __repr__(self):
            return f"PathBM({self.path!r})"

        @property
        def dtype(self):
            return self.path.dtype

        @property
        def device(self):
            return self.path.device

        @property
        def shape(self):
            return self.path.shape

        @property
        def levy_area_approximation(self):
            return "none"

    return torchsde, PathBM(path)


def test_em_matches_torchsde_euler_on_the_same_brownian_increments():
    f = lambda x, t: -1.5 * x + torch.sin(2 * x + t)
    g = lambda x, t: 0.3 + 0.2 * torch.cos(x)  # state-dependent diagonal noise
    t0, t1, steps = 0.0, 1.0, 64  # dyadic h: torchsde's accumulated times hit our grid exactly
    x0 = torch.randn(16, 3, generator=_gen(5), dtype=F64)
    W = BrownianPath(x0.shape, t0, t1, seed=6, dtype=F64)
    torchsde, bm = _wrap_for_torchsde(W)

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return f(y, float(t))

        def g(self, t, y):
            return g(y, float(t))

    h = (t1 - t0) / steps
    ys = torchsde.sdeint(SDE(), x0, torch.tensor([t0, t1], dtype=F64), bm=bm, method="euler", dt=h)
    ours = solve(Ladder([f], [1.0]), x0, t0=t0, t1=t1, steps=steps, diffusion=g, method="em", noise=W)
    err = float((ys[-1] - ours.x).abs().max())
    assert err < 1e-8, f"EM differs from torchsde's Euler by {err:.3g}"
    # Not trivially equal: the SDE moved the state.
    assert float((ours.x - x0).abs().max()) > 0.1


# ----------------------------------------------------------------------------- convergence


def test_em_strong_order_one_for_additive_noise():
    """OU dX = -theta X dt + sigma dW: EM has strong order 1 (additive noise). Nested grids
    of 2^3..2^8 steps on one Brownian path, reference 2^13 steps on the same path."""
    theta, sigma = 1.5, 0.8
    L = Ladder([lambda x, t: -theta * x], [1.0])
    x0 = torch.randn(512, 1, generator=_gen(7), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=8, dtype=F64, depth=14)
    ref = solve(L, x0, t0=0.0, t1=1.0, steps=2**13, diffusion=sigma, method="em", noise=W).x
    ns = [2**k for k in range(3, 9)]
    errs = [rms(solve(L, x0, t0=0.0, t1=1.0, steps=n, diffusion=sigma, method="em", noise=W).x, ref) for n in ns]
    assert all(a > b for a, b in zip(errs, errs[1:])), f"errors not decreasing: {errs}"
    order = fit_slope([1.0 / n for n in ns], errs)
    assert abs(order - 1.0) < 0.2, f"fitted strong order {order:.3f}, expected 1.0 +- 0.2 (errors {errs})"


def test_em_strong_order_one_half_for_geometric_brownian_motion():
    """dX = a X dt + b X dW has the exact solution x0 exp((a - b^2/2) T + b W(T)), and EM
    strong order 1/2 (multiplicative noise): fitted slope 0.5 +- 0.15 over 2^4..2^10 steps."""
    a, b = 0.5, 0.5  # b = 1 gives heavy-tailed errors and fitted orders 0.41..0.59 across seeds
    L = Ladder([lambda x, t: a * x], [1.0])
    x0 = torch.ones(1024, 1, dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=9, dtype=F64, depth=12)
    exact = x0 * torch.exp((a - b * b / 2) + b * W.value(1.0))
    ns = [2**k for k in range(4, 11)]
    errs = [
        rms(solve(L, x0, t0=0.0, t1=1.0, steps=n, diffusion=lambda x, t: b * x, method="em", noise=W).x, exact)
        for n in ns
    ]
    order = fit_slope([1.0 / n for n in ns], errs)
    assert abs(order - 0.5) < 0.15, f"fitted strong order {order:.3f}, expected 0.5 +- 0.15 (errors {errs})"


def test_mlem_extra_error_falls_like_mu_to_the_minus_one_half():
    """ML-EM's pathwise distance to EM with the top level on the same path is about
    sqrt(sum_l int delta_l^2 / lambda_l dt) ~ mu^-1/2 for rates mu * c_l with p = lambda h < 1."""
    L = Ladder(wiggle_levels([0.5, 0.25, 0.0]), [1.0, 4.0, 16.0])
    steps = 512
    x0 = torch.randn(512, 1, generator=_gen(10), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=11, dtype=F64, depth=10)
    top = solve(L, x0, t0=0.0, t1=1.0, steps=steps, diffusion=0.5, method="em", noise=W).x
    mus = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]  # 1.5 decades; p ranges 0.002 .. 0.125
    errs = []
    for i, mu in enumerate(mus):
        s = solve(
            L,
            x0,
            t0=0.0,
            t1=1.0,
            steps=steps,
            diffusion=0.5,
            method="mlem",
            rates=[mu, mu / 2],
            noise=W,
            generator=_gen(100 + i),
        )
        assert max(max(p) for p in s.probabilities) < 0.2
        errs.append(rms(s.x, top))
    slope = fit_slope(mus, errs)
    assert abs(slope + 0.5) < 0.15, f"fitted slope of log error vs log mu {slope:.3f}, expected -0.5 +- 0.15 ({errs})"


# ----------------------------------------------------------------------------- cost accounting


@pytest.mark.parametrize(
    "probs", [(0.3, 0.1), (0.3, 0.2, 0.1), (0.05, 0.5), (1.0, 1.0, 1.0), (0.0, 1.0), (1.0, 0.0, 0.2)]
)
def test_per_sample_evaluation_counts_match_the_cost_sharing_rule(probs):
    K = len(probs) + 1
    levels = [Counting((lambda k: lambda x, t: -x + 0.1 * k * torch.sin(x))(k)) for k in range(K)]
    costs = [4.0**k for k in range(K)]
    L = Ladder(levels, costs)
    steps, batch = 100, 400
    T = 1.0
    h = T / steps
    rates = [1e9 if p == 1.0 else p / h for p in probs]  # 1e9: p = 1 exactly on every step
    x0 = torch.randn(batch, 2, generator=_gen(12), dtype=F64)
    s = solve(L, x0, t0=0.0, t1=T, steps=steps, diffusion=0.2, method="mlem", rates=rates, generator=_gen(13))
    # The counters agree with what the levels actually saw.
    assert s.evaluations == tuple(f.rows for f in levels)
    n = steps * batch
    assert s.evaluations[0] == n, "level 1 must run on every sample at every step"
    ps = list(s.probabilities[0]) + [0.0]
    for j in range(2, K + 1):  # level j needed where B_j or B_{j+1} fired
        q = 1 - (1 - ps[j - 2]) * (1 - ps[j - 1])
        se = math.sqrt(n * q * (1 - q))
        got = s.evaluations[j - 1]
        # q = 1 (a neighbouring correction always fires): exactly n, each level paid once even
        # when both corrections that need it fire; q = 0: exactly 0.
        assert abs(got - n * q) <= 5 * se, f"level {j}: {got} evaluations, expected {n * q:.0f} +- {se:.0f}"
    assert s.cost_per_sample == pytest.approx(sum(e * c for e, c in zip(s.evaluations, costs)) / batch, rel=1e-15)
    assert s.top_equivalents == pytest.approx(s.cost_per_sample / costs[-1], rel=1e-15)


def test_shared_evaluation_counts_match_the_cost_sharing_rule():
    levels = [Counting(f) for f in wiggle_levels([0.5, 0.25, 0.0])]
    L = Ladder(levels, [1.0, 4.0, 16.0])
    steps, batch, T = 2000, 3, 1.0
    probs = (0.3, 0.1)
    x0 = torch.zeros(batch, 1, dtype=F64)
    s = solve(
        L,
        x0,
        t0=0.0,
        t1=T,
        steps=steps,
        method="mlem",
        rates=[p * steps / T for p in probs],
        draws="shared",
        generator=_gen(14),
    )
    assert s.evaluations == tuple(f.rows for f in levels)
    assert all(e % batch == 0 for e in s.evaluations), "shared draws evaluate whole batches"
    assert s.evaluations[0] == steps * batch
    for j, q in ((2, 1 - (1 - probs[0]) * (1 - probs[1])), (3, probs[1])):
        m = s.evaluations[j - 1] // batch  # steps on which level j ran: Binomial(steps, q)
        se = math.sqrt(steps * q * (1 - q))
        assert abs(m - steps * q) < 5 * se, f"level {j}: ran on {m} steps, expected {steps * q:.0f} +- {se:.1f}"


def test_time_dependent_rates_and_zero_rates():
    """lambda_3(t) = 0 before t = 0.5 and huge after: level 3 runs exactly on the late steps."""
    levels = [Counting(f) for f in wiggle_levels([0.5, 0.25, 0.0])]
    L = Ladder(levels, [1.0, 2.0, 3.0])
    steps, batch = 40, 10
    x0 = torch.zeros(batch, 1, dtype=F64)
    rates = [0.0, lambda t: 0.0 if t < 0.5 else 1e6]
    s = solve(L, x0, t0=0.0, t1=1.0, steps=steps, method="mlem", rates=rates, generator=_gen(15))
    h = 1.0 / steps
    late = sum(1 for n in range(steps) if n * h >= 0.5)  # the solver's step times t_n = t0 + n h
    assert late == steps // 2
    assert s.evaluations == (steps * batch, late * batch, late * batch)
    assert [p[1] for p in s.probabilities] == [0.0] * (steps - late) + [1.0] * late
    assert all(p[0] == 0.0 for p in s.probabilities)


def test_em_cost_is_steps_top_level_evaluations():
    L = Ladder(wiggle_levels([0.5, 0.0]), [1.0, 10.0])
    x0 = torch.zeros(7, 2, dtype=F64)
    s = solve(L, x0, t0=0.0, t1=1.0, steps=33, diffusion=0.1, method="em")
    assert s.evaluations == (0, 33 * 7)
    assert s.cost_per_sample == 330.0
    assert s.top_equivalents == 33.0
    s0 = solve(L, x0, t0=0.0, t1=1.0, steps=33, method="em", level=0)
    assert s0.top_equivalents == pytest.approx(3.3, rel=1e-15)
    d = s.to_dict()
    assert d["top_equivalents"] == 33.0 and d["evaluations"] == [0, 231] and d["method"] == "em"
    assert d["batch_size"] == 7 and d["steps"] == 33


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("draws", ["per_sample", "shared"])
def test_same_generator_seed_same_result(draws):
    L = three_level_ladder()
    x0 = torch.randn(64, 2, generator=_gen(16), dtype=F64)

    def run(seed):
        # The default noise path is also drawn from the generator.
        return solve(
            L,
            x0,
            t0=0.0,
            t1=1.0,
            steps=50,
            diffusion=0.4,
            method="mlem",
            rates=[10.0, 4.0],
            draws=draws,
            generator=_gen(seed),
        )

    a, b, c = run(17), run(17), run(18)
    assert torch.equal(a.x, b.x) and a.evaluations == b.evaluations
    assert not torch.allclose(a.x, c.x, atol=1e-3)
    # The global generator: torch.manual_seed makes a run reproducible.
    torch.manual_seed(19)
    d = solve(L, x0, t0=0.0, t1=1.0, steps=50, diffusion=0.4, method="mlem", rates=[10.0, 4.0], draws=draws)
    torch.manual_seed(19)
    e = solve(L, x0, t0=0.0, t1=1.0, steps=50, diffusion=0.4, method="mlem", rates=[10.0, 4.0], draws=draws)
    assert torch.equal(d.x, e.x)


# ----------------------------------------------------------------------------- outputs and inputs


@pytest.mark.parametrize(
    "steps,every,expect_n", [(10, 3, [0, 3, 6, 9, 10]), (8, 4, [0, 4, 8]), (5, 1, [0, 1, 2, 3, 4, 5]), (4, 9, [0, 4])]
)
def test_save_every(steps, every, expect_n):
    L = three_level_ladder()
    x0 = torch.randn(6, 2, generator=_gen(20), dtype=F64)
    t0, t1 = 0.5, 2.5
    s = solve(
        L,
        x0,
        t0=t0,
        t1=t1,
        steps=steps,
        diffusion=0.3,
        method="mlem",
        rates=[5.0, 2.0],
        generator=_gen(21),
        save_every=every,
    )
    h = (t1 - t0) / steps
    assert s.ts.dtype == torch.float64 and s.ts.shape == (len(expect_n),)
    assert torch.allclose(s.ts, torch.tensor([t0 + n * h for n in expect_n], dtype=F64), rtol=0, atol=ROUND)
    assert s.ts[-1] == t1
    assert s.xs.shape == (len(expect_n), 6, 2)
    assert torch.equal(s.xs[0], x0)
    assert torch.equal(s.xs[-1], s.x)
    # Saving does not change the trajectory: the same run without saving ends at the same x.
    s2 = solve(L, x0, t0=t0, t1=t1, steps=steps, diffusion=0.3, method="mlem", rates=[5.0, 2.0], generator=_gen(21))
    assert torch.equal(s2.x, s.x) and s2.ts is None and s2.xs is None


def test_save_every_intermediate_states_are_the_shorter_runs():
    L = Ladder(wiggle_levels([0.3]), [1.0])
    x0 = torch.randn(4, 1, generator=_gen(22), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=23, dtype=F64)
    s = solve(L, x0, t0=0.0, t1=1.0, steps=8, diffusion=0.7, method="em", noise=W, save_every=2)
    for k, x_saved in enumerate(s.xs):
        if k == 0:
            continue
        part = solve(L, x0, t0=0.0, t1=2 * k / 8, steps=2 * k, diffusion=0.7, method="em", noise=W)
        assert torch.allclose(x_saved, part.x, rtol=0, atol=ROUND)


def test_diffusion_forms_agree_for_a_constant():
    L = three_level_ladder()
    x0 = torch.randn(16, 2, generator=_gen(24), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=25, dtype=F64)
    forms = {
        "number": 0.6,
        "tensor": torch.tensor(0.6, dtype=F64),
        "g(t)": lambda t: 0.6,
        "g(x, t)": lambda x, t: torch.full_like(x, 0.6),
        "g(x, t) scalar": lambda x, t: 0.6,
        "g(t) with default": lambda t, scale=1.0: 0.6 * scale,
    }
    results = {k: solve(L, x0, t0=0.0, t1=1.0, steps=30, diffusion=g, method="em", noise=W).x for k, g in forms.items()}
    ref = results["number"]
    for k, x in results.items():
        assert torch.allclose(x, ref, rtol=0, atol=ROUND), f"diffusion given as {k} disagrees"
    ode = solve(L, x0, t0=0.0, t1=1.0, steps=30, method="em").x
    assert not torch.allclose(ode, ref, atol=1e-2), "the noise had no effect"
    zero = solve(L, x0, t0=0.0, t1=1.0, steps=30, diffusion=0.0, method="em", noise=W).x
    assert torch.allclose(zero, ode, rtol=0, atol=ROUND), "diffusion=0 should be the ODE"


def test_time_dependent_diffusion_forms_agree():
    L = three_level_ladder()
    x0 = torch.randn(16, 2, generator=_gen(26), dtype=F64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=27, dtype=F64)
    a = solve(L, x0, t0=0.0, t1=1.0, steps=30, diffusion=lambda t: 1.0 + t, method="em", noise=W).x
    b = solve(
        L, x0, t0=0.0, t1=1.0, steps=30, diffusion=lambda x, t: (1.0 + t) * torch.ones_like(x), method="em", noise=W
    ).x
    assert torch.allclose(a, b, rtol=0, atol=ROUND)


def test_per_row_diffusion_broadcasts():
    """A (state_dim,) tensor diffusion scales each coordinate; zero noise in one coordinate
    gives that coordinate's ODE solution."""
    L = Ladder([lambda x, t: -x], [1.0])
    x0 = torch.ones(8, 2, dtype=F64)
    s = solve(
        L, x0, t0=0.0, t1=1.0, steps=10, diffusion=torch.tensor([0.0, 1.0], dtype=F64), method="em", generator=_gen(28)
    )
    assert torch.allclose(s.x[:, 0], torch.full((8,), 0.9**10, dtype=F64), rtol=ROUND, atol=0)
    assert float(s.x[:, 1].std()) > 0.1


def test_float32_runs_and_keeps_dtype():
    L = three_level_ladder()
    x0 = torch.randn(8, 2, generator=_gen(29))
    s = solve(L, x0, t0=0.0, t1=1.0, steps=20, diffusion=0.5, method="mlem", rates=[5.0, 2.0], generator=_gen(30))
    assert s.x.dtype == torch.float32 and bool(torch.isfinite(s.x).all())


def test_check_finite_false_lets_nan_through():
    L = Ladder([lambda x, t: x * float("nan")], [1.0])
    s = solve(L, torch.ones(2, 1, dtype=F64), t0=0.0, t1=1.0, steps=3, method="em", check_finite=False)
    assert bool(torch.isnan(s.x).all())


@pytest.mark.parametrize(
    "method,draws,rates",
    [
        ("em", "per_sample", None),
        ("mlem", "per_sample", [1e9, 1e9]),
        ("mlem", "per_sample", [20.0, 10.0]),
        ("mlem", "shared", [20.0, 10.0]),
        ("mlem", "per_sample", [0.0, 0.0]),
    ],
)
def test_solve_never_modifies_inputs_or_level_outputs_in_place(method, draws, rates):
    """Level 1 returns one cached tensor every time and level 3 returns its input itself; after
    the solve, x0 and the cached tensor must be unchanged."""
    batch = 16
    cached = torch.linspace(-1.0, 1.0, 2 * batch, dtype=F64).reshape(batch, 2)
    keep_cached, x0 = cached.clone(), torch.randn(batch, 2, generator=_gen(31), dtype=F64)
    keep_x0 = x0.clone()
    L = Ladder([lambda x, t: cached, lambda x, t: 0.5 * x, lambda x, t: x], [1.0, 2.0, 4.0])
    solve(
        L,
        x0,
        t0=0.0,
        t1=1.0,
        steps=20,
        diffusion=0.3,
        method=method,
        rates=rates,
        draws=draws,
        generator=_gen(32),
        save_every=5,
    )
    assert torch.equal(x0, keep_x0), "x0 was modified in place"
    assert torch.equal(cached, keep_cached), "a level's output was modified in place"


def test_telescoping_estimate_is_unbiased_and_counts():
    """The public one-step estimator: mean over 20000 rows equals f^3 within 5 standard errors;
    counted evaluations match the rows that ran."""
    from multilevel_em.engine import LevelEvaluator, telescoping_estimate

    fs = [lambda x, t, a=a: -x + a * torch.sin(3 * x + t) for a in (0.5, 0.2, 0.0)]
    ladder = Ladder(fs, [1, 4, 16])
    x = torch.full((20000, 1), 0.7, dtype=torch.float64)
    ev = LevelEvaluator(ladder, x)
    est = telescoping_estimate(ev, x, 0.3, [0.4, 0.2], generator=torch.Generator().manual_seed(0))
    top = fs[-1](x[:1], 0.3).item()
    mean, se = est.mean().item(), est.std().item() / math.sqrt(x.shape[0])
    assert abs(mean - top) < 5 * se, (mean, top, se)
    assert ev.evaluations[0] == x.shape[0]
    assert 0 < ev.evaluations[2] < ev.evaluations[1] < x.shape[0]


@pytest.mark.parametrize("probs, match", [([0.5], "expected 2 probabilities"), ([0.5, 1.5], "in \\[0, 1\\]")])
def test_telescoping_estimate_rejects_bad_probabilities(probs, match):
    from multilevel_em.engine import LevelEvaluator, telescoping_estimate

    ladder = Ladder([lambda x, t: -x] * 3, [1, 2, 3])
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=match):
        telescoping_estimate(LevelEvaluator(ladder, x), x, 0.0, probs)
