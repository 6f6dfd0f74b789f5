"""Issue 11, part 2: measured propagation, sensitivity-weighted and learned rates (diffusion/rates.py) and
``mlem bench rates``."""

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from multilevel_em.calibration.rates import RateShape, expected_cost
from multilevel_em.cli.main import main
from multilevel_em.diffusion import MultilevelDenoiser, VPSchedule, sample
from multilevel_em.diffusion.rates import as_rates, learn_probabilities, measure_profiles

SCHED = VPSchedule.linear()


class Linear:
    """eps(x, t) = a x: every quantity of the ODE sampler is then a product of known scalars."""

    def __init__(self, a):
        self.a = a

    def __call__(self, x, t):
        return self.a * x


def test_sensitivity_of_linear_models_in_the_ode_sampler_is_the_exact_product_of_step_factors():
    # euler_ode: x <- x + h beta / 2 (x - eps / sigma). A weight w on (eps^l - eps^{l-1}) at call n moves the
    # next state by -h_n beta_n / (2 sigma_n) w (a_l - a_{l-1}) x_n, then every later step multiplies it by
    # g_m = 1 + h_m beta_m / 2 (1 - a_K / sigma_m); the local EM displacement is h_n beta_n / sigma_n (a_l - a_{l-1}) |x_n|,
    # so s_n = prod_{m > n} |g_m| / 2 exactly (the models are linear: no linearization error).
    a = [0.3, 0.5, 0.6]
    models = [Linear(v) for v in a]
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 6
    prof = measure_profiles(models, SCHED, x, sampler="euler_ode", steps=steps, blocks=steps, t_min=1e-2)
    t, h = prof.times, prof.spans
    beta = np.array([float(SCHED.beta(v)) for v in t])
    sigma = np.array([float(SCHED.sigma(v)) for v in t])
    g = 1 + h * beta / 2 * (1 - a[-1] / sigma)
    expected = np.array([np.prod(np.abs(g[n + 1 :])) / 2 for n in range(steps)])
    for l in range(2):
        np.testing.assert_allclose(prof.sensitivity[:, l], expected, rtol=1e-6)
    # delta per call: (beta / sigma) |a_l - a_{l-1}| RMS |x_n|
    np.testing.assert_allclose(prof.deltas[:, 1], beta / sigma * 0.1 * prof.state_rms, rtol=1e-9)


def test_probabilities_meet_the_budget_and_expected_cost_matches_the_counted_cost():
    models = [Linear(0.3), Linear(0.5), Linear(0.6)]
    costs = [1.0, 4.0, 16.0]
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    prof = measure_profiles(models, SCHED, x[:64], sampler="euler_ode", steps=10, blocks=2, t_min=1e-2)
    for kind in ("closed", "sensitivity"):
        p = prof.shape(kind).probabilities(costs, 4.0)
        c = np.asarray(costs) / costs[-1]
        assert expected_cost(p, c) == pytest.approx(4.0, rel=1e-6)
        den = MultilevelDenoiser(
            models,
            costs=costs,
            rates=as_rates(prof.times, prof.spans, p),
            generator=torch.Generator().manual_seed(2),
            schedule=SCHED,
        )
        out = sample(den, x, schedule=SCHED, steps=10, sampler="euler_ode", t_min=1e-2)
        # counted cost: a mean of 2000 independent per-sample costs; 3% is > 5 standard errors here
        assert out.top_equivalents == pytest.approx(4.0, rel=0.03)
    with pytest.raises(ValueError, match="budget"):
        prof.shape("closed").probabilities(costs, 10 * 1 / 16)  # the base level alone costs 10 / 16
    with pytest.raises(ValueError, match="kind"):
        prof.shape("learned")


def test_predicted_mse_of_linear_models_against_the_exact_second_moment():
    # euler_ode with eps^l = a_l x: step n multiplies the state by g_n + sum_l w_{n,l} k_{n,l}, with
    # g_n = 1 + h beta / 2 (1 - a_K / sigma), k_{n,l} = -h beta / (2 sigma) (a_l - a_{l-1}) and independent
    # mean-zero weights w = B / p - 1 of variance 1 / p - 1. So, exactly,
    #   E|x - x_top|^2 = E|x_T|^2 (prod_n (g_n^2 + sum_l Var_{n,l} k_{n,l}^2) - prod_n g_n^2),
    # whose first-order part E|x_T|^2 sum_{n,l} Var k^2 prod_{m != n} g_m^2 is what predicted_mse computes.
    a = [0.3, 0.5, 0.6]
    models = [Linear(v) for v in a]
    costs = [1.0, 4.0, 16.0]
    steps = 6
    x = torch.randn(8000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    prof = measure_profiles(models, SCHED, x[:256], sampler="euler_ode", steps=steps, blocks=steps, t_min=1e-2)
    p = prof.shape("closed").probabilities(costs, 2.0)
    t, h = prof.times, prof.spans
    beta = np.array([float(SCHED.beta(v)) for v in t])
    sigma = np.array([float(SCHED.sigma(v)) for v in t])
    g = 1 + h * beta / 2 * (1 - a[-1] / sigma)
    k = np.stack([-h * beta / (2 * sigma) * (a[l + 1] - a[l]) for l in range(2)], 1)
    var = 1.0 / p - 1.0
    first = sum((var[n] * k[n] ** 2).sum() * np.prod(np.delete(g, n) ** 2) for n in range(steps))
    norm_profile = float(x[:256].pow(2).sum(1).mean())
    assert prof.predicted_mse(p) == pytest.approx(norm_profile * first, rel=1e-6)
    exact = float(x.pow(2).sum(1).mean()) * (np.prod(g**2 + (var * k**2).sum(1)) - np.prod(g**2))
    den = MultilevelDenoiser(
        models,
        costs=costs,
        rates=as_rates(prof.times, prof.spans, p),
        generator=torch.Generator().manual_seed(5),
        schedule=SCHED,
    )
    ml = sample(den, x, schedule=SCHED, steps=steps, sampler="euler_ode", t_min=1e-2).x
    top = sample(models[-1], x, schedule=SCHED, steps=steps, sampler="euler_ode", t_min=1e-2).x
    sq = (ml - top).pow(2).sum(1)
    measured, se = float(sq.mean()), float(sq.std()) / math.sqrt(len(sq))
    assert abs(measured - exact) < 3 * se, (measured, exact, se)  # fixed seeds; 3 standard errors of the mean
    assert se < 0.1 * measured
    # without s the model is off by the missing factors (1/2 from the ODE, prod |g| from the later steps)
    assert abs(prof.predicted_mse(p, propagate=False) / prof.predicted_mse(p) - 1) > 0.2


def test_floor_keeps_fired_kicks_below_the_state_norm():
    shape = RateShape(
        np.array([1.0, 0.5]), np.array([0.5, 0.5]), np.array([[1.0], [1e-6]]), "x", floor=np.array([[0.0], [0.2]])
    )
    # costs (0.25, 1): base 2 x 0.25; the budget leaves 0.7 for the correction; call 1's own share would be
    # ~0 (value 1e-6), the floor gives it 0.2, so call 0 gets the other 0.5.
    p = shape.probabilities([0.25, 1.0], 0.5 + 0.7)
    assert p[1, 0] == pytest.approx(0.2, rel=1e-9)
    assert p[0, 0] == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="floor"):
        shape.probabilities([0.25, 1.0], 0.5 + 0.1)


def test_learned_probabilities_keep_the_budget_and_stop_on_nan():
    models = [Linear(0.3), Linear(0.5), Linear(0.6)]
    costs = [1.0, 4.0, 16.0]
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    prof = measure_profiles(models, SCHED, x, sampler="euler_ode", steps=8, blocks=2, t_min=1e-2)
    init = prof.shape("closed").probabilities(costs, 3.0)

    def draw(i):
        return torch.randn(32, 2, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64), {"t_min": 1e-2}

    res = learn_probabilities(
        models, costs, SCHED, draw, sampler="euler_ode", steps=8, budget=3.0, init=init, iterations=4, batch=32
    )
    assert expected_cost(res.p, np.asarray(costs) / 16) == pytest.approx(3.0, rel=1e-6)
    assert len(res.losses) == 4 and all(math.isfinite(v) for v in res.losses)

    class Bad:
        def __call__(self, x, t):
            return x * float("nan") if x.shape[0] > 1 else x

    with pytest.raises(FloatingPointError, match="NaN"):
        learn_probabilities(
            [Bad(), models[1], models[2]],
            costs,
            SCHED,
            draw,
            sampler="euler_ode",
            steps=8,
            budget=3.0,
            init=init,
            iterations=2,
            batch=32,
        )
    with pytest.raises(ValueError, match="lr"):
        learn_probabilities(models, costs, SCHED, draw, sampler="euler_ode", steps=8, budget=3.0, init=init, lr=0)


@pytest.mark.slow
def test_bench_rates_quick_through_the_cli(tmp_path):
    out, png = tmp_path / "rates.json", tmp_path / "rates.png"
    res = CliRunner().invoke(main, ["bench", "rates", "--quick", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert png.stat().st_size > 0
    assert d["quick"] and d["problems"][0]["problem"] == "mixture"
    kinds = {s["kind"] for s in d["summary"]}
    assert kinds == {"sensitivity", "learned"}
    for run in d["problems"][0]["runs"]:
        for row in run["budgets"]:
            for v in row["kinds"].values():
                assert v["expected_cost"] == pytest.approx(row["budget"], rel=1e-6)
                assert all(math.isfinite(m) and m > 0 for m in v["mse"])
            for kind in ("closed", "sensitivity"):
                assert row["kinds"][kind]["predicted_mse_first_order"] > 0
                assert row["kinds"][kind]["predicted_mse_no_propagation"] > 0


def test_bench_rates_bad_input_through_the_cli(tmp_path):
    r = CliRunner().invoke(
        main, ["bench", "rates", "--quick", "--problems", "cifar", "--out", str(tmp_path / "a.json")]
    )
    assert r.exit_code == 2 and "--problems" in r.output and "Traceback" not in r.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(
        main, ["bench", "rates", "--quick", "--out", str(blocker / "x.json"), "--plot", str(tmp_path / "p.png")]
    )
    assert r.exit_code != 0 and "--out" in r.output and "Traceback" not in r.output
    assert not os.path.exists(tmp_path / "p.png")


def test_as_rates_is_a_deprecated_name_for_per_call_rates():
    from multilevel_em.diffusion import rates as drates

    t, h, p = np.array([0.5, 0.25]), np.array([0.25, 0.25]), np.array([[0.5], [1.0]])
    with pytest.warns(DeprecationWarning, match="per_call_rates"):
        old = drates.as_rates(t, h, p)
    new = as_rates(t, h, p)
    assert [r(0.5) for r in old] == [r(0.5) for r in new] == [2.0]
