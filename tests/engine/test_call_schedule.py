"""Schedules of models (issue 22, item 1): per-call sub-ladders and probabilities through the one estimator.

Affine levels f^l(x) = a_l x + c_l, so every level and every correction is a distinct, row-dependent value.
Statistical checks use fixed seeds and a tolerance of 5 standard errors (see conftest).
"""

import json
import math

import pytest
import torch

from multilevel_em import Ladder
from multilevel_em.engine import CallSchedule, LevelEvaluator, schedule_estimate, telescoping_estimate

A = (1.0, 1.5, 1.75, 1.8)
C = (0.0, 0.3, -0.2, 0.5)


def _ladder():
    return Ladder([lambda x, t, a=a_, c=c_: a * x + c for a_, c_ in zip(A, C)], [1, 2, 4, 8])


def _level(j, x):
    return A[j] * x + C[j]


def _run(schedule, call, x, seed=0, draws="per_sample"):
    ev = LevelEvaluator(_ladder(), x)
    out = schedule_estimate(schedule, call, ev, x, 0.5, draws=draws, generator=torch.Generator().manual_seed(seed))
    return out, ev.evaluations


def test_top_alone_and_switch_are_exact_and_cost_what_they_say():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    top = CallSchedule.top_alone(5, 4)
    for n in range(5):
        out, evals = _run(top, n, x)
        torch.testing.assert_close(out, _level(3, x))
        assert evals == [0, 0, 0, 6]
    assert top.expected_cost([1, 2, 4, 8]) == 5.0 and top.biased_calls == []
    sw = CallSchedule.switch(10, 4, level=0, fraction=0.4)  # T-Stitch's default: the smallest level first
    assert sw.levels[:4] == ((0,),) * 4 and sw.levels[4:] == ((3,),) * 6 and sw.biased_calls == [0, 1, 2, 3]
    torch.testing.assert_close(_run(sw, 3, x)[0], _level(0, x))
    torch.testing.assert_close(_run(sw, 4, x)[0], _level(3, x))
    assert sw.expected_cost([1, 2, 4, 8]) == pytest.approx(6 + 4 / 8)
    assert "4 switched call(s)" in sw.describe()


@pytest.mark.parametrize("draws", ["per_sample", "static"])
def test_full_ladder_schedule_is_the_estimator_with_the_same_draws(draws):
    """A schedule over all levels runs telescoping_estimate itself: the same numbers for the same generator."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    probs = (0.5, 0.3, 0.1)
    s = CallSchedule.mlem([probs] * 3, 4)
    got, evals = _run(s, 1, x, seed=7, draws=draws)
    ev = LevelEvaluator(_ladder(), x)
    want = telescoping_estimate(ev, x, 0.5, probs, draws=draws, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want) and evals == ev.evaluations


def test_sub_ladder_call_is_unbiased_for_its_top_and_skips_the_other_levels():
    """Sub-ladder (level 2, level 4) with p = 0.25: E[F] = f^4 (every element within 5 SE over 4000 rows),
    levels 1 and 3 never run, level 4 runs on a fraction p of the rows (within 5 SE); the same statistic
    against level 3's output must fail (the test has power)."""
    n, p = 4000, 0.25
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(3)).repeat(n, 1)
    s = CallSchedule(((1, 3),), ((p,),), 4)
    out, evals = _run(s, 0, x, seed=5)
    mean, se = out.mean(0), out.std(0) / math.sqrt(n)
    assert float(((mean - _level(3, x[0])).abs() / se).max()) < 5
    assert float(((mean - _level(2, x[0])).abs() / se).max()) > 8
    assert evals[0] == 0 and evals[2] == 0 and evals[1] == n
    assert abs(evals[3] / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert s.expected_evaluations() == [[0.0, 1.0, 0.0, p]]
    assert s.expected_cost([1, 2, 4, 8]) == pytest.approx((2 + p * 8) / 8)


def test_expected_evaluations_share_levels_between_corrections():
    """Level l of a sub-ladder runs where correction l or l+1 fires: 1 - (1 - p_l)(1 - p_{l+1})."""
    s = CallSchedule(((0, 1, 3),), ((0.3, 0.1),), 4)
    assert s.expected_evaluations()[0] == pytest.approx([1.0, 1 - 0.7 * 0.9, 0.0, 0.1])
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(4))
    _, evals = _run(s, 0, x, seed=9)
    q = 1 - 0.7 * 0.9
    assert abs(evals[1] / 3000 - q) < 5 * math.sqrt(q * (1 - q) / 3000)


def test_json_round_trip_and_validation_on_load():
    s = CallSchedule(((0, 3), (3,)), ((0.5,), ()), 4, "hybrid")
    d = json.loads(json.dumps(s.to_dict()))
    assert CallSchedule.from_dict(d) == s
    with pytest.raises(ValueError, match="missing field.*levels"):
        CallSchedule.from_dict({"num_levels": 4, "probabilities": [[]]})
    with pytest.raises(ValueError, match="unknown field.*rates"):
        CallSchedule.from_dict({**d, "rates": [1]})
    with pytest.raises(TypeError, match="JSON object"):
        CallSchedule.from_dict([1, 2])


@pytest.mark.parametrize(
    "levels, probs, match",
    [
        ([(0, 4)], [(0.5,)], r"levels\[0\] \(call 1\): level index 4 is outside the ladder"),
        ([(-1,)], [()], "outside the ladder"),
        ([(2, 1)], [(0.5,)], "increasing level indices"),
        ([(1, 1)], [(0.5,)], "increasing level indices"),
        ([()], [()], "at least one level"),
        ([(0.5,)], [()], "integer level indices"),
        ([3], [()], "sequence of 0-based level indices"),
        ([(0, 3)], [(1.5,)], r"probabilities\[0\] \(call 1\): expected probabilities in \[0, 1\], got 1.5"),
        ([(0, 3)], [(-0.1,)], r"in \[0, 1\]"),
        ([(0, 3)], [(float("nan"),)], r"in \[0, 1\]"),
        ([(0, 3)], [(0.5, 0.5)], "expected 1 probabilities"),
        ([(0, 3)], [], "one entry per call"),
        ([], [], "at least one call"),
    ],
)
def test_bad_schedules_are_refused_naming_the_call(levels, probs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CallSchedule(levels, probs, 4)


def test_a_schedule_for_another_ladder_or_call_count_is_refused():
    s = CallSchedule.top_alone(5, 3)
    with pytest.raises(ValueError, match="made for a ladder of 3 levels, but this one has 4"):
        _run(s, 0, torch.zeros(2, 1))
    s4 = CallSchedule.top_alone(5, 4)
    with pytest.raises(ValueError, match=r"call: expected 0..4"):
        _run(s4, 5, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="made for 5 model calls, but the sampler makes 7"):
        s4.check_calls(7)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="calls: expected an integer >= 1"):
            CallSchedule.top_alone(bad, 4)
    with pytest.raises(ValueError, match="fraction"):
        CallSchedule.switch(10, 4, 0, 1.5)
    with pytest.raises(ValueError, match="num_levels"):
        CallSchedule(((0,),), ((),), 0)
