"""BrownianPath: exact consistency properties (to float64 rounding) and its law (statistical,
fixed seeds, 5-standard-error tolerances)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import F64

from multilevel_em.engine import BrownianPath

# Rounding tolerance for sums/differences of O(1) float64 values.
ROUND = 1e-12


def _path(shape=(64, 3), t0=0.0, t1=1.0, seed=0, **kw):
    return BrownianPath(shape, t0, t1, seed=seed, dtype=F64, **kw)


# ----------------------------------------------------------------------------- basics


def test_shape_dtype_and_origin():
    W = _path((5, 2), t0=-1.0, t1=2.0)
    assert W.value(-1.0).shape == (5, 2)
    assert W.value(-1.0).dtype == F64
    assert torch.equal(W.value(-1.0), torch.zeros(5, 2, dtype=F64)), "W(t0) must be 0"
    assert W.increment(-0.5, 1.3).shape == (5, 2)
    assert W.increment(0.0, 1.0).dtype == F64
    # value() returns a fresh tensor: modifying it must not corrupt the path.
    v = W.value(0.5)
    before = v.clone()
    v.add_(100.0)
    assert torch.equal(W.value(0.5), before)
    # float32 paths work and have the requested dtype.
    W32 = BrownianPath(4, 0.0, 1.0, seed=1, dtype=torch.float32)
    assert W32.increment(0.1, 0.9).dtype == torch.float32
    assert W32.shape == torch.Size([4])


def test_value_is_increment_from_t0():
    W = _path(t0=0.25, t1=1.75)
    for t in (0.3, 1.0, 1.2345, 1.75):
        assert torch.equal(W.value(t), W.increment(0.25, t))


# ----------------------------------------------------------------------------- exact consistency


@pytest.mark.parametrize("a,b,c", [(0.0, 0.5, 1.0), (0.1, 0.37, 0.9), (0.123456, 0.123457, 0.7), (0.25, 0.6, 1.0)])
def test_additivity(a, b, c):
    W = _path()
    lhs = W.increment(a, b) + W.increment(b, c)
    rhs = W.increment(a, c)
    assert torch.allclose(lhs, rhs, rtol=0, atol=ROUND), "increment(a,b)+increment(b,c) != increment(a,c)"


@pytest.mark.parametrize("steps", [3, 7, 8, 10, 100])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (0.5, 2.0)])
def test_fine_grid_sums_to_whole_increment(steps, t0, t1):
    W = _path(t0=t0, t1=t1)
    h = (t1 - t0) / steps
    ts = [t0 + n * h for n in range(steps)] + [t1]
    total = sum(W.increment(ts[n], ts[n + 1]) for n in range(steps))
    assert torch.allclose(total, W.increment(t0, t1), rtol=0, atol=ROUND)


@pytest.mark.parametrize("coarse,factor", [(3, 2), (3, 7), (7, 3), (5, 3), (10, 10), (6, 5)])
def test_refinement_consistency_of_nested_grids(coarse, factor):
    """A fine grid of coarse * factor uniform steps, with its times computed as the solver
    computes them (t0 + n * h), sums to the coarse grid's increments, also where the two
    grids' float times for the same point differ in the last bit (e.g. 3 * (1/15) vs 1/5)."""
    t0, t1 = 0.0, 1.0
    W = _path(t0=t0, t1=t1)
    fine = coarse * factor
    hc, hf = (t1 - t0) / coarse, (t1 - t0) / fine
    tc = [t0 + n * hc for n in range(coarse)] + [t1]
    tf = [t0 + n * hf for n in range(fine)] + [t1]
    for k in range(coarse):
        coarse_inc = W.increment(tc[k], tc[k + 1])
        fine_sum = sum(W.increment(tf[j], tf[j + 1]) for j in range(k * factor, (k + 1) * factor))
        err = float((fine_sum - coarse_inc).abs().max())
        assert err <= ROUND, f"coarse step {k} of {coarse}: fine increments differ from coarse by {err:.3g}"


@pytest.mark.parametrize("t", [0.2, 1.0 / 3.0, 0.7, 0.123456789])
def test_continuity_at_rounding_level(t):
    """Times one or two ulps apart give values that agree to rounding, not independent draws."""
    W = _path()
    for tt in (math.nextafter(t, 2.0), math.nextafter(math.nextafter(t, 0.0), 0.0)):
        err = float((W.value(tt) - W.value(t)).abs().max())
        assert err <= 1e-9, f"W({tt!r}) - W({t!r}) = {err:.3g}: not continuous at the rounding level"


def test_query_order_independence():
    times = [0.0] + sorted(random.Random(1).uniform(0.0, 1.0) for _ in range(60)) + [0.5, 0.25, 0.75, 1.0]
    shuffled = times[:]
    random.Random(2).shuffle(shuffled)
    W1, W2 = _path(seed=7), _path(seed=7)
    v1 = {t: W1.value(t) for t in times}
    v2 = {t: W2.value(t) for t in shuffled}
    for t in times:
        assert torch.equal(v1[t], v2[t]), f"W({t}) depends on the query order"
    # A tiny cache forces evictions and recomputation; values must not change.
    W3 = _path(seed=7, cache_size=2)
    for t in reversed(shuffled):
        assert torch.equal(W3.value(t), v1[t]), f"W({t}) changes when the cache is evicted"


def test_same_seed_same_path_different_seed_different_path():
    ts = [0.1, 0.5, 0.77, 1.0]
    A, B, C = _path(seed=3), _path(seed=3), _path(seed=4)
    for t in ts:
        assert torch.equal(A.value(t), B.value(t))
        # Independent N(0, t) draws of 192 entries cannot coincide.
        assert not torch.allclose(A.value(t), C.value(t), atol=1e-3)


def test_generator_seeded_path_is_reproducible():
    A = BrownianPath((8,), 0.0, 1.0, generator=torch.Generator().manual_seed(11), dtype=F64)
    B = BrownianPath((8,), 0.0, 1.0, generator=torch.Generator().manual_seed(11), dtype=F64)
    C = BrownianPath((8,), 0.0, 1.0, generator=torch.Generator().manual_seed(12), dtype=F64)
    assert A.seed == B.seed and A.seed != C.seed
    for t in (0.3, 0.5, 1.0):
        assert torch.equal(A.value(t), B.value(t))
        assert not torch.allclose(A.value(t), C.value(t), atol=1e-3)
    # With neither seed nor generator, torch's global generator decides the seed.
    torch.manual_seed(5)
    D = BrownianPath((8,), 0.0, 1.0, dtype=F64)
    torch.manual_seed(5)
    E = BrownianPath((8,), 0.0, 1.0, dtype=F64)
    assert torch.equal(D.value(0.4), E.value(0.4))


# ----------------------------------------------------------------------------- the law

N_STAT = 20000  # independent entries per statistical check


@pytest.mark.parametrize(
    "s,t",
    [
        (0.0, 2.0),  # the whole interval (root draw)
        (0.5, 1.0),  # dyadic nodes
        (0.2, 1.3),  # non-dyadic times in distinct leaves
        (0.3, 0.3 + 1e-3),  # short, non-dyadic, still in distinct leaves (leaf width 2/4096)
        (1.9, 2.0),
    ],
)
def test_increment_variance_is_t_minus_s(s, t):
    W = BrownianPath((N_STAT,), 0.0, 2.0, seed=123, dtype=F64)
    dw = W.increment(s, t)
    v = t - s
    # Mean: standard error sqrt(v / N); tolerance 5 SE.
    mean_se = math.sqrt(v / N_STAT)
    assert abs(float(dw.mean())) < 5 * mean_se, f"mean {float(dw.mean()):.3g} vs 0 (SE {mean_se:.3g})"
    # Chi-square: sum(dw^2) / v ~ chi2(N), mean N, sd sqrt(2N); tolerance 5 sd.
    chi2 = float(dw.pow(2).sum()) / v
    z = (chi2 - N_STAT) / math.sqrt(2 * N_STAT)
    assert abs(z) < 5, f"sum(dW^2)/(t-s) = {chi2:.1f}, {z:.2f} sd from N={N_STAT}"


def test_disjoint_increments_and_entries_are_uncorrelated():
    # Grid with dyadic and non-dyadic points; 8 disjoint increments over 2 entries per row.
    grid = [0.0, 0.1, 0.25, 0.3, 0.5, 0.61, 0.8, 0.95, 1.0]
    W = BrownianPath((N_STAT, 2), 0.0, 1.0, seed=99, dtype=F64)
    incs = [W.increment(a, b) for a, b in zip(grid[:-1], grid[1:])]
    # Standardise each increment: its variance must be b - a.
    cols = [(d / math.sqrt(b - a)) for d, (a, b) in zip(incs, zip(grid[:-1], grid[1:]))]
    Z = torch.cat(list(cols), dim=1)  # (N, 16): every pair should be independent N(0,1)
    corr = (Z.T @ Z) / N_STAT
    off = corr - torch.diag(torch.diag(corr))
    # Each sample correlation of independent normals has SE 1/sqrt(N) ~ 0.0071; tolerance 5 SE
    # for each of the 120 pairs (all pass with probability > 0.9999).
    tol = 5 / math.sqrt(N_STAT)
    worst = float(off.abs().max())
    assert worst < tol, f"largest correlation between disjoint increments / entries {worst:.4f} >= {tol:.4f}"
    diag = torch.diag(corr)
    # Each diagonal is a chi2(N)/N: sd sqrt(2/N) ~ 0.01; tolerance 5 sd.
    assert float((diag - 1).abs().max()) < 5 * math.sqrt(2 / N_STAT)


def test_brownian_bridge_covariance_inside_the_tree():
    """Cov(W(s), W(t)) = min(s, t) for s, t at dyadic and non-dyadic times (distinct leaves)."""
    W = BrownianPath((N_STAT,), 0.0, 1.0, seed=5, dtype=F64)
    ts = [0.125, 0.3, 0.5, 0.71, 1.0]
    vals = torch.stack([W.value(t) for t in ts], 1)  # (N, 5)
    emp = (vals.T @ vals) / N_STAT
    for i, s in enumerate(ts):
        for j, t in enumerate(ts):
            # Var of W(s)W(t) is s*t + min(s,t)^2 <= 2; SE <= sqrt(2/N); tolerance 5 SE.
            se = math.sqrt((s * t + min(s, t) ** 2) / N_STAT)
            assert abs(float(emp[i, j]) - min(s, t)) < 5 * se, (s, t, float(emp[i, j]))
