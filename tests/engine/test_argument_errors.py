"""Bad input gets a clear error that names the offending argument (or level and time)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F64, three_level_ladder

from multilevel_em.engine import BrownianPath, Ladder, solve

f = lambda x, t: -x


def _x0(batch=4, dim=2, dtype=F64):
    return torch.zeros(batch, dim, dtype=dtype)


def _solve(ladder=None, x0=None, **kw):
    args = dict(t0=0.0, t1=1.0, steps=4, method="mlem", rates=[1.0, 1.0])
    args.update(kw)
    return solve(ladder if ladder is not None else three_level_ladder(), x0 if x0 is not None else _x0(), **args)


# ----------------------------------------------------------------------------- Ladder


def test_empty_ladder():
    with pytest.raises(ValueError, match=r"levels: expected at least one level"):
        Ladder([], [])


def test_single_callable_instead_of_a_list():
    with pytest.raises(TypeError, match=r"levels: .*single callable"):
        Ladder(f, [1.0])


def test_levels_not_a_sequence():
    with pytest.raises(TypeError, match=r"levels: expected a sequence"):
        Ladder(3, [1.0])


def test_level_not_callable():
    with pytest.raises(TypeError, match=r"levels\[1\] \(level 2\): expected a callable"):
        Ladder([f, "not a function"], [1.0, 2.0])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_cost_not_positive_finite(bad):
    with pytest.raises(ValueError, match=r"costs\[1\] \(level 2\): expected a positive finite cost"):
        Ladder([f, f], [1.0, bad])


def test_costs_decreasing():
    with pytest.raises(ValueError, match=r"costs: expected nondecreasing costs.*costs\[2\]=2"):
        Ladder([f, f, f], [1.0, 4.0, 2.0])


@pytest.mark.parametrize("costs", [[1.0], [1.0, 2.0, 3.0]])
def test_costs_wrong_length(costs):
    with pytest.raises(ValueError, match=r"costs: expected 2 costs \(one per level\), got %d" % len(costs)):
        Ladder([f, f], costs)


def test_costs_not_numbers():
    with pytest.raises(TypeError, match=r"costs: expected a sequence of numbers"):
        Ladder([f, f], [1.0, "big"])


def test_names_wrong_length():
    with pytest.raises(ValueError, match=r"names: expected 2 names, got 1"):
        Ladder([f, f], [1.0, 2.0], names=["only one"])


def test_select_nothing():
    with pytest.raises(ValueError, match=r"indices"):
        Ladder([f], [1.0]).select([])


# ----------------------------------------------------------------------------- solve: arguments


def test_ladder_not_a_ladder():
    with pytest.raises(TypeError, match=r"ladder: expected a multilevel_em.Ladder"):
        solve([f], _x0(), t0=0.0, t1=1.0, steps=1, method="em")


@pytest.mark.parametrize(
    "x0,match",
    [
        ([[0.0]], r"x0: expected a torch.Tensor"),
        (torch.zeros(3, 2, dtype=torch.int64), r"x0: expected a floating tensor"),
        (torch.tensor(1.0, dtype=F64), r"x0: expected a floating tensor of shape"),
    ],
)
def test_bad_x0(x0, match):
    with pytest.raises((TypeError, ValueError), match=match):
        solve(Ladder([f], [1.0]), x0, t0=0.0, t1=1.0, steps=1, method="em")


@pytest.mark.parametrize("t0,t1", [(1.0, 1.0), (1.0, 0.5)])
def test_t1_not_after_t0(t0, t1):
    with pytest.raises(ValueError, match=r"t1: expected t1 > t0"):
        _solve(t0=t0, t1=t1)


@pytest.mark.parametrize("name", ["t0", "t1"])
def test_times_not_finite_or_not_numbers(name):
    with pytest.raises(ValueError, match=rf"{name}: expected a finite time"):
        _solve(**{name: math.nan})
    with pytest.raises(TypeError, match=rf"{name}: expected a number"):
        _solve(**{name: "0"})


@pytest.mark.parametrize("steps,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_steps_below_one_or_not_an_int(steps, exc):
    with pytest.raises(exc, match=r"steps: expected an int >= 1"):
        _solve(steps=steps)


def test_unknown_method_and_draws():
    with pytest.raises(ValueError, match=r"method: expected 'em' or 'mlem'"):
        _solve(method="rk4")
    with pytest.raises(ValueError, match=r"draws: expected one of 'per_sample', 'shared', 'exact'"):
        _solve(draws="per_batch")


def test_bad_save_every():
    with pytest.raises(ValueError, match=r"save_every: expected an int >= 1"):
        _solve(save_every=0)


@pytest.mark.parametrize("level", [3, -4, 1.0])
def test_em_level_out_of_range(level):
    with pytest.raises(ValueError, match=r"level: expected an int in \[-3, 2\]"):
        _solve(method="em", level=level)


# ----------------------------------------------------------------------------- rates


def test_rates_missing_for_mlem():
    with pytest.raises(ValueError, match=r"rates: method='mlem' needs the rates"):
        _solve(rates=None)


@pytest.mark.parametrize("rates", [[1.0], [1.0, 2.0, 3.0]])
def test_rates_wrong_length(rates):
    with pytest.raises(
        ValueError, match=r"rates: expected 2 rates \(one for each of levels 2..3\), got %d" % len(rates)
    ):
        _solve(rates=rates)


def test_rates_single_value():
    with pytest.raises(TypeError, match=r"rates: expected a sequence of 2 rates"):
        _solve(rates=5.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rates_negative_nan_or_infinite(bad):
    with pytest.raises(ValueError, match=r"rates\[1\] \(level 3\): expected a finite rate >= 0, got"):
        _solve(rates=[1.0, bad])


def test_rate_not_a_number():
    with pytest.raises(TypeError, match=r"rates\[0\] \(level 2\): expected a number"):
        _solve(rates=["fast", 1.0])


def test_callable_rate_going_bad_later_names_the_time():
    rate = lambda t: 1.0 if t < 0.5 else -1.0
    with pytest.raises(ValueError, match=r"rates\[0\] \(level 2\): expected a finite rate >= 0, got -1.0 at t=0.5"):
        _solve(rates=[rate, 1.0])


def test_rates_as_a_tensor_or_array():
    """A 1-D tensor (or numpy array) of rates is a sequence of rates, not "one value"."""
    np = pytest.importorskip("numpy")
    a = _solve(rates=[2.0, 1.0], generator=torch.Generator().manual_seed(0))
    b = _solve(rates=torch.tensor([2.0, 1.0]), generator=torch.Generator().manual_seed(0))
    c = _solve(rates=np.array([2.0, 1.0]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x)


# ----------------------------------------------------------------------------- noise and diffusion


def test_noise_dtype_mismatch():
    W = BrownianPath((4, 2), 0.0, 1.0, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"noise: dtype/device torch.float32/cpu differs from x0's torch.float64/cpu"):
        _solve(diffusion=1.0, noise=W)


def test_noise_shape_mismatch():
    W = BrownianPath((4, 3), 0.0, 1.0, seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"noise: shape \(4, 3\) differs from x0's \(4, 2\)"):
        _solve(diffusion=1.0, noise=W)


def test_noise_interval_too_short():
    W = BrownianPath((4, 2), 0.0, 0.5, seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"noise: covers \[0.0, 0.5\], which does not contain"):
        _solve(diffusion=1.0, noise=W)


def test_noise_not_a_brownian_path():
    with pytest.raises(TypeError, match=r"noise: expected a BrownianPath"):
        _solve(diffusion=1.0, noise=torch.zeros(4, 2, dtype=F64))


def test_bad_diffusion():
    with pytest.raises(TypeError, match=r"diffusion: expected None, a number"):
        _solve(diffusion="loud")
    with pytest.raises(ValueError, match=r"diffusion: expected a finite number"):
        _solve(diffusion=math.inf)


def test_bad_generator():
    with pytest.raises(TypeError, match=r"generator: expected a torch.Generator"):
        _solve(generator=123)
    with pytest.raises(TypeError, match=r"generator: expected a torch.Generator"):
        _solve(generator=123, diffusion=1.0)


# ----------------------------------------------------------------------------- what the levels return


@pytest.mark.parametrize("method", ["em", "mlem"])
def test_level_output_shape_differs(method):
    g = lambda x, t: -x[:, :1]
    L = Ladder([f, g], [1.0, 2.0], names=["small", "big"])
    with pytest.raises(
        ValueError, match=r"level 2 \(big\): output shape \(\d+, 1\) differs from the state's shape \(\d+, 2\)"
    ):
        solve(L, _x0(), t0=0.0, t1=1.0, steps=3, method=method, rates=[1e9])


def test_level_output_not_a_tensor_or_wrong_dtype():
    L = Ladder([lambda x, t: x.numpy()], [1.0])
    with pytest.raises(TypeError, match=r"level 1 \(level 1\): expected a Tensor, got ndarray"):
        solve(L, _x0(), t0=0.0, t1=1.0, steps=1, method="em")
    L = Ladder([lambda x, t: x.float()], [1.0])
    with pytest.raises(TypeError, match=r"level 1 \(level 1\): output dtype/device torch.float32/cpu differs"):
        solve(L, _x0(), t0=0.0, t1=1.0, steps=1, method="em")


def _nan_after(t_bad, value=math.nan):
    return lambda x, t: -x + (value if t >= t_bad else 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("method,draws", [("em", "per_sample"), ("mlem", "per_sample"), ("mlem", "shared")])
def test_non_finite_level_output_names_the_level_and_time(method, draws, value):
    L = Ladder([f, f, _nan_after(0.5, value)], [1.0, 2.0, 4.0], names=["a", "b", "c"])
    with pytest.raises(FloatingPointError, match=r"level 3 \(c\) produced NaN or Inf at t=0\.5;.*check_finite=False"):
        solve(L, _x0(), t0=0.0, t1=1.0, steps=4, method=method, rates=[1e9, 1e9], draws=draws)
    # check_finite=False: no error, the non-finite values propagate.
    s = solve(L, _x0(), t0=0.0, t1=1.0, steps=4, method=method, rates=[1e9, 1e9], draws=draws, check_finite=False)
    assert not bool(torch.isfinite(s.x).all())


def test_non_finite_lower_level_is_named_even_when_the_top_is_fine():
    L = Ladder([_nan_after(0.25), f], [1.0, 2.0], names=["cheap", "good"])
    with pytest.raises(FloatingPointError, match=r"level 1 \(cheap\) produced NaN or Inf at t=0\.25"):
        solve(L, _x0(), t0=0.0, t1=1.0, steps=4, method="mlem", rates=[0.0])


# ----------------------------------------------------------------------------- BrownianPath


@pytest.mark.parametrize("t0,t1", [(1.0, 1.0), (1.0, 0.0)])
def test_brownian_t1_not_after_t0(t0, t1):
    with pytest.raises(ValueError, match=r"t1: expected t1 > t0"):
        BrownianPath((2,), t0, t1, seed=0)


def test_brownian_times_not_finite():
    with pytest.raises(ValueError, match=r"t0, t1: expected finite times"):
        BrownianPath((2,), 0.0, math.inf, seed=0)


@pytest.mark.parametrize("t", [-0.1, 1.5, math.nan])
def test_brownian_query_outside_interval(t):
    W = BrownianPath((2,), 0.0, 1.0, seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"t: expected a time in \[t0, t1\] = \[0.0, 1.0\]"):
        W.value(t)
    with pytest.raises(ValueError, match=r"t: expected a time in \[t0, t1\]"):
        W.increment(0.0, t)
    with pytest.raises(ValueError, match=r"s: expected a time in \[t0, t1\]"):
        W.increment(t, 1.0)


@pytest.mark.parametrize("s,t", [(0.5, 0.5), (0.7, 0.2)])
def test_brownian_s_not_before_t(s, t):
    W = BrownianPath((2,), 0.0, 1.0, seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"s, t: expected s < t"):
        W.increment(s, t)


def test_brownian_other_arguments():
    with pytest.raises(ValueError, match=r"seed, generator: give at most one"):
        BrownianPath((2,), 0.0, 1.0, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"depth: expected an int in \[1, 52\]"):
        BrownianPath((2,), 0.0, 1.0, seed=0, depth=0)
    with pytest.raises(TypeError, match=r"dtype: expected a floating dtype"):
        BrownianPath((2,), 0.0, 1.0, seed=0, dtype=torch.int32)
    with pytest.raises(TypeError, match=r"seed: expected an int"):
        BrownianPath((2,), 0.0, 1.0, seed=1.5)
    with pytest.raises(ValueError, match=r"shape: expected non-negative sizes"):
        BrownianPath((2, -1), 0.0, 1.0, seed=0)
    with pytest.raises(TypeError, match=r"shape: expected a sequence of ints"):
        BrownianPath("ab", 0.0, 1.0, seed=0)


def test_noise_without_diffusion_warns():
    ladder = Ladder([lambda x, t: -x], [1.0])
    x0 = torch.ones(2, 1, dtype=torch.float64)
    W = BrownianPath(x0.shape, 0.0, 1.0, seed=0, dtype=x0.dtype)
    with pytest.warns(UserWarning, match="noise: ignored"):
        sol = solve(ladder, x0, t0=0.0, t1=1.0, steps=4, method="em", noise=W)
    assert torch.allclose(sol.x, x0 * 0.75**4)
