"""The one home of rates and plans: engine.rates (validation, p = min(1, lambda h)), calibration.rates (expected
cost, mu search, per-call closed form, rate rules by name, rate callables), calibration.planning (budget rule,
sampling plans, choices) and the sampler measurement beside SamplerFit, with the old import paths still working."""

import importlib
import itertools
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from multilevel_em.calibration import Calibration, ReverseTimeRate, budget_steps, planning
from multilevel_em.calibration.rates import (
    RATE_RULES,
    PiecewiseLinearRate,
    RateShape,
    closed_form_probabilities,
    expected_cost,
    idle_probabilities,
    per_call_rates,
    rate_shape,
    search_mu,
    search_threshold,
)
from multilevel_em.calibration.samplers import check_samplers, measure_samplers
from multilevel_em.diffusion.registry import measurable_samplers
from multilevel_em.engine import check_rates, firing_probabilities, firing_probability, rate_value

DIGITS = "multilevel_em/images/pretrained/digits/calibration.json"


@pytest.fixture(scope="module")
def digits():
    return Calibration.load(DIGITS)


# ----------------------------------------------------------------------------- engine.rates


def test_firing_probability_for_numbers_and_arrays():
    assert firing_probability(2.0, 0.25) == 0.5
    assert firing_probability(8.0, 0.25) == 1.0
    p = firing_probability(np.array([[1.0, 10.0]]), np.array([[0.5], [0.05]]))
    assert p.shape == (2, 2) and np.array_equal(p, [[0.5, 1.0], [0.05, 0.5]])
    assert firing_probabilities([1.0, lambda t: 2 * t], 0.5, 0.5) == [0.5, 0.5]


def test_one_rate_validation_for_every_user():
    with pytest.raises(ValueError, match=r"rates\[1\] \(level 3\): expected a finite rate >= 0, got -1.0 at t=0.5"):
        check_rates([1.0, lambda t: -1.0], 3, 0.5)
    with pytest.raises(TypeError, match="got one value"):
        check_rates(2.0, 3, 0.0)
    with pytest.raises(ValueError, match="expected 2 rates"):
        check_rates([1.0], 3, 0.0)
    with pytest.raises(ValueError, match="my message"):
        check_rates(None, 3, 0.0, missing="my message")
    # t None: constants are checked, callables are not called
    assert check_rates([1.0, lambda t: 1 / 0], 3, None)[0] == 1.0
    with pytest.raises(TypeError, match=r"rates\[0\] \(level 2\): expected a number"):
        rate_value(0, "x", None)


# ----------------------------------------------------------------------------- calibration.rates


def test_expected_cost_is_the_cost_sharing_rule_by_enumeration():
    rng = np.random.default_rng(1)
    p = rng.random((5, 3))  # 5 steps, 4 levels
    c = np.array([1.0, 2.0, 5.0, 11.0])
    want = 0.0
    for n in range(5):
        for fired in itertools.product([0, 1], repeat=3):
            prob = np.prod([p[n, l] if b else 1 - p[n, l] for l, b in enumerate(fired)])
            needed = [True] + [bool(fired[i - 1] or (i < 3 and fired[i])) for i in range(1, 4)]
            want += prob * sum(ci for ci, nd in zip(c, needed) if nd)
    assert expected_cost(p, c) == pytest.approx(want, rel=1e-12)
    assert expected_cost(p, c, np.ones(5)) == pytest.approx(want, rel=1e-12)
    # vectorised over leading axes, and the idle probabilities it is built on
    assert np.allclose(expected_cost(np.stack([p, p]), c), want)
    assert np.allclose(idle_probabilities(p)[:, -1], 1 - p[:, -1])


def test_search_threshold_grid_and_bisection():
    ok = lambda v: v >= 0.3
    assert search_threshold(ok, 0.0, 1.0, smallest=True) == pytest.approx(0.3, abs=1 / 16**4)
    assert search_threshold(lambda v: v <= 0.3, 0.0, 1.0, smallest=False, points=3, rounds=100) == pytest.approx(
        0.3, abs=1e-15
    )
    assert search_threshold(lambda v: v <= 2.0, 0.0, 1.0, smallest=False) == 1.0  # good everywhere: the end
    assert search_threshold(lambda v: v < -1.0, 0.0, 1.0, smallest=False) == 0.0  # bad everywhere: the start
    assert search_mu(lambda m: m > 1.0, np.zeros((3, 2)), smallest=True) == 0.0  # nothing to scale


def test_closed_form_probabilities_meet_the_budget_and_agree_with_plan_calls(digits):
    times = np.linspace(0.05, digits.t1 * 0.95, 30)
    spans = np.full(30, (digits.t1 - digits.t0) / 30)
    cp = digits.plan_calls(12.0, times, spans)
    delta, C = digits.corrections(cp.levels)
    d = np.stack([np.interp(times, digits.times, delta[:, k]) for k in range(len(C))], 1) * spans[:, None]
    c = digits.costs[list(cp.levels)]
    mu, p = closed_form_probabilities(d / np.sqrt(C), c, 12.0 * digits.costs[-1], weights=np.ones(30))
    assert mu == cp.mu and np.array_equal(p, cp.probabilities)
    assert expected_cost(p, c / digits.costs[-1]) == pytest.approx(12.0, rel=2e-3)
    assert expected_cost(p, c / digits.costs[-1]) <= 12.0 * (1 + 1e-12)


def test_rate_rules_by_name():
    assert set(RATE_RULES) == {"closed", "sensitivity", "learned"}
    t, h = np.linspace(1, 0.1, 4), np.full(4, 0.25)
    d = np.ones((4, 1))
    closed = rate_shape("closed", t, h, d)
    assert isinstance(closed, RateShape) and closed.kind == "closed" and closed.floor is None
    sens = rate_shape("sensitivity", t, h, d, sensitivity=np.full((4, 1), 0.5), state_rms=np.ones(4), max_kick=0.5)
    assert np.allclose(sens.values, 0.5) and np.allclose(sens.floor, 0.5)
    with pytest.raises(ValueError, match="learn_probabilities"):
        rate_shape("learned", t, h, d)
    with pytest.raises(ValueError, match="expected one of 'closed', 'sensitivity', 'learned'"):
        rate_shape("nope", t, h, d)
    p = closed.probabilities([1.0, 4.0], 3.0)
    assert expected_cost(p, [0.25, 1.0]) == pytest.approx(3.0, rel=1e-9)


def test_rate_callables_one_family():
    r = PiecewiseLinearRate([1.0, 0.0], [3.0, 1.0])  # unsorted knots are sorted
    assert r(0.5) == 2.0 and r(-1) == 1.0 and r(2) == 3.0
    times, spans = np.array([0.9, 0.5, 0.1]), np.array([0.4, 0.4, 0.1])
    p = np.array([[0.2], [0.4], [0.05]])
    (rate,) = per_call_rates(times, spans, p)
    assert [firing_probability(rate(t), s) for t, s in zip(times, spans)] == pytest.approx(p[:, 0].tolist())
    rev = ReverseTimeRate(r, 1.0)
    assert rev(0.25) == r(0.75)


# ----------------------------------------------------------------------------- planning


def test_budget_steps_is_public_and_floors_with_a_tolerance():
    assert budget_steps(3 * (1 / 3) * 10) == 10
    assert budget_steps(9.99) == 9 and budget_steps(0.5) == 0


def test_sampling_plan_and_choose_delegate_to_the_calibration_layer(digits):
    measured = sorted(digits.samplers)[0]
    assert planning.sampling_plan(digits, 20.0, sampler=measured).sampler == measured
    with pytest.warns(UserWarning, match="has not measured it"):
        p = planning.sampling_plan(digits, 20.0, sampler="ddpm")
    assert p.sampler is None
    with pytest.raises(ValueError, match="disagree"):
        planning.plan_for_budget(digits, 200.0, steps=2)
    choice = planning.choose(digits, 20.0)
    best = min(choice["candidates"], key=lambda c: (c["predicted_error"], c["predicted_top_equivalents"]))
    assert choice["method"] == best["method"] and choice["predicted_error"] == best["predicted_error"]


def test_measure_samplers_takes_a_runner(digits):
    ref = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    calls = []

    def run(sampler, steps, plan=None):
        calls.append((sampler, steps, plan is not None))
        x = ref + (2.0 / steps if steps < 64 else 0.0)  # error 2 sqrt(3) / N against 64 steps: order 1
        if plan is not None:
            x = x + 0.01 * torch.randn(4, 3, generator=torch.Generator().manual_seed(steps))
        return x

    fits = measure_samplers(
        run, digits, {"em": "sde"}, n=4, steps=(4, 8, 16), ref_steps=64, gain_steps=(8,), cheapest=0.01
    )
    f = fits["em"]
    assert f.order == pytest.approx(1.0, abs=0.05) and f.family == "sde"
    assert calls[0] == ("em", 64, False) and ("em", 8, True) in calls
    assert len(f.gain_points) == 1 and f.gain_points[0]["steps"] == 8
    with pytest.raises(ValueError, match="ddpm"):
        check_samplers(["ddpm"], measurable_samplers())
    with pytest.raises(ValueError, match="family 'pde'"):
        measure_samplers(run, digits, {"em": "pde"}, cheapest=0.01)
    with pytest.raises(ValueError, match="no calibration"):
        measure_samplers(run, None, {"em": "sde"}, n=4, steps=(4, 8), ref_steps=64, gain_steps=(8,), cheapest=0.01)


# ----------------------------------------------------------------------------- old paths and layering


def test_old_paths_still_work_with_a_deprecation_warning():
    sys.modules.pop("multilevel_em.images.sampler_calibration", None)
    with pytest.warns(DeprecationWarning, match="calibration.samplers"):
        sc = importlib.import_module("multilevel_em.images.sampler_calibration")
    assert sc.DEFAULT_STEPS == (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) and "ddim" in sc.MEASURABLE
    from multilevel_em.diffusion import rates as drates

    with pytest.warns(DeprecationWarning, match="calibration.rates.RateShape"):
        assert drates.RateShape is RateShape
    with pytest.warns(DeprecationWarning, match="calibration.rates.expected_cost"):
        assert drates.expected_cost is expected_cost
    from multilevel_em.images.pipeline import ReverseTimeRate as R2

    assert R2 is ReverseTimeRate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from multilevel_em.calibration.model import CallPlan, Plan, Prediction  # noqa: F401
        from multilevel_em.calibration.model import PiecewiseLinearRate as P2

        assert P2 is PiecewiseLinearRate


def test_calibration_imports_neither_diffusion_nor_images():
    code = (
        "import sys, multilevel_em.calibration, multilevel_em.calibration.planning; "
        "print(sorted(m for m in sys.modules if m.startswith(('multilevel_em.diffusion', 'multilevel_em.images'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_shipped_calibration_round_trips(digits):
    again = Calibration.from_dict(digits.to_dict())
    assert again == digits and math.isfinite(again.plan(budget=20.0).error)
