"""``Calibration.plan`` keeps to ``max_steps`` (issue 20, item 7).

A target plan used to ignore it: 498,856,759,623 steps at target 1e-12 on the shipped digits
calibration, 100 steps with ``max_steps=20``.  Now a plan's step count never exceeds
``max_steps``, and a target that needs more is refused with the step count it needs.
"""

from __future__ import annotations

import math
import os

import pytest

from multilevel_em import Calibration

SHIPPED = os.path.join(
    os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits", "calibration.json"
)


@pytest.fixture(scope="module")
def digits() -> Calibration:
    cal = Calibration.load(SHIPPED)
    assert cal.top_bias == 0.0 and cal.step_error > 0  # the EM model: error a h, no bias
    return cal


def em_steps_needed(cal: Calibration, target: float) -> int:
    """The fewest EM steps whose step error a T / n is below ``target`` (no bias)."""
    return math.floor(cal.step_error * (cal.t1 - cal.t0) / target) + 1


def test_an_unreachable_target_says_so_and_how_many_steps_it_needs(digits):
    need = em_steps_needed(digits, 1e-12)
    assert need > 10**13
    with pytest.raises(ValueError, match=r"^target 1e-12 cannot be met within max_steps=65,536: EM's step error") as e:
        digits.plan(target=1e-12)
    assert f"needs {need:,} steps" in str(e.value) and "Raise the target or max_steps" in str(e.value)


@pytest.mark.parametrize("max_steps", [20, 64, 300])
@pytest.mark.parametrize("target", [0.3, 0.8, 2.0, 5.0, 20.0])
def test_a_target_plan_never_exceeds_max_steps(digits, target, max_steps):
    need = em_steps_needed(digits, target)
    if need > max_steps:
        with pytest.raises(ValueError, match=rf"cannot be met within max_steps={max_steps:,}.* needs {need:,} steps"):
            digits.plan(target=target, max_steps=max_steps)
    else:
        p = digits.plan(target=target, max_steps=max_steps)
        assert need <= p.steps <= max_steps
        assert p.error <= target * (1 + 1e-9)


def test_the_issues_case_100_steps_with_max_steps_20(digits):
    target = digits.step_error * (digits.t1 - digits.t0) / 99.5  # EM needs 100 steps
    assert em_steps_needed(digits, target) == 100
    assert digits.plan(target=target).steps >= 100  # without a limit it takes them
    with pytest.raises(ValueError, match=r"max_steps=20.* needs 100 steps"):
        digits.plan(target=target, max_steps=20)


def test_fixed_steps_above_max_steps_are_refused(digits):
    with pytest.raises(ValueError, match=r"^steps=30 is above max_steps=20"):
        digits.plan(budget=40.0, steps=30, max_steps=20)
    with pytest.raises(ValueError, match=r"^steps=30 is above max_steps=20"):
        digits.plan(target=5.0, steps=30, max_steps=20)
    assert digits.plan(budget=40.0, max_steps=20).steps <= 20
    assert digits.plan(budget=40.0, steps=20, max_steps=20).steps == 20


def test_a_huge_step_error_is_a_clear_error_not_an_overflow(digits):
    d = digits.to_dict()
    d["step_error"] = 1e300  # finite, so the file is valid; the target is simply out of reach
    cal = Calibration.from_dict(d)
    with pytest.raises(ValueError, match=r"cannot be met within max_steps=65,536.* needs about 9.99e\+299 steps"):
        cal.plan(target=1.0)


def test_a_sampler_target_beyond_max_steps_says_so(digits):
    fit = digits.samplers["dpmpp_2m"]
    target = fit.error(200)  # the measured curve reaches it only past 128 steps
    with pytest.raises(ValueError, match=r"cannot be met within max_steps=64: the top level alone with dpmpp_2m"):
        digits.plan(target=target, sampler="dpmpp_2m", max_steps=64)
    p = digits.plan(target=target, sampler="dpmpp_2m", max_steps=2**16)
    assert p.steps <= 2**16 and p.error <= target * (1 + 1e-9)


def test_a_call_plan_that_saves_nothing_says_so_and_by_how_much():
    """Issue 20 item 27: Calibration.plan_calls (what MultilevelModel.plan calls) says the truth when the
    budget pays every level at every call: every level runs, at more than the top model alone."""
    from multilevel_em.calibration.verdicts import call_plan_message

    msg = call_plan_message((0, 1, 2), 1.0, 100.0, 4, 5.25, all_ones=True)
    assert "every level runs at every call" in msg and "31% more than the top model alone (4)" in msg
    assert "nothing is saved" in msg and "this is the top model alone" not in msg
    cheap = call_plan_message((0, 1, 2), 1.0, 2.0, 4, 2.0, all_ones=False)
    assert "nothing is saved" not in cheap
