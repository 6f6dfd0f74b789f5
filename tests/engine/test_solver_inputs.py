"""solve() and the engine's evaluator on inputs that misbehave: levels that modify their input in place or
change their output's shape mid-run, a diffusion of the wrong shape, absurd step counts; and the memory an
ML-EM run keeps per step (issue 20, items 8 and 28 and "also noticed")."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from conftest import F64, three_level_ladder

from multilevel_em import Ladder, solve
from multilevel_em.diffusion import MultilevelDenoiser
from multilevel_em.engine.solver import StepProbabilities


def _in_place_ladder(which: int, method: str = "add_"):
    """Three levels; level ``which`` (0-based) modifies its input in place with ``method``."""

    def bad(x, t):
        getattr(x, method)(1.0) if method != "index" else x[:1].zero_()
        return -x

    levels = [lambda x, t: -x, lambda x, t: -0.9 * x, lambda x, t: -0.8 * x]
    levels[which] = bad
    return Ladder(levels, [1, 2, 4], ["small", "mid", "big"])


@pytest.mark.parametrize("method,which", [("em", 2), ("mlem", 0), ("mlem", 1), ("mlem", 2)])
def test_a_level_that_modifies_its_input_in_place_is_named(method, which):
    """Item 8: the caller's x0 (and, in ML-EM, what the next level sees) would change: refused, naming the level."""
    x0 = torch.ones(4, 2)
    name = ("small", "mid", "big")[which]
    with pytest.raises(ValueError, match=rf"level {which + 1} \({name}\) modified its input x in place at t=0;"):
        solve(
            _in_place_ladder(which),
            x0,
            t0=0.0,
            t1=1.0,
            steps=5,
            method=method,
            rates=[1e6, 1e6],  # every level at every step
            generator=torch.Generator().manual_seed(0),
        )


def test_a_write_through_a_view_of_the_input_is_detected_too():
    with pytest.raises(ValueError, match=r"level 2 \(mid\) modified its input x in place at t=0"):
        solve(_in_place_ladder(1, "index"), torch.ones(4, 2), t0=0.0, t1=1.0, steps=3, rates=[1e6, 1e6])


def test_levels_that_leave_their_input_alone_give_the_same_numbers_as_before():
    """Out-of-place levels (the contract) run as before; a level may return its input itself (a view)."""
    lad = Ladder([lambda x, t: x, lambda x, t: x.view_as(x), lambda x, t: -x], [1, 2, 4])
    s = solve(lad, torch.ones(3, 2, dtype=F64), t0=0.0, t1=1.0, steps=4, rates=[1e6, 1e6])
    assert torch.allclose(s.x, torch.full((3, 2), 0.75**4, dtype=F64))


def test_multilevel_denoiser_names_a_level_that_modifies_its_input():
    """Item 8 through MultilevelDenoiser: its first-call check (on a view of the caller's x) and later calls."""
    good = lambda x, t: -x
    bad = lambda x, t: x.mul_(2.0)
    den = MultilevelDenoiser([good, bad], costs=[1, 2], rates=[1e6])
    den.set_step(0.1)
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"level 2 .*modified its input x in place"):
        den(x, 0.5)
    # levels that behave on the first call and not later are caught at the later call
    calls = []

    def late(x, t):
        calls.append(1)
        return x.mul_(2.0) if len(calls) > 1 else -x

    den = MultilevelDenoiser([good, late], costs=[1, 2], rates=[1e6])
    den.set_step(0.1)
    with pytest.raises(ValueError, match=r"level 2 .*modified its input x in place at t=0.5"):
        den(torch.ones(3, 2), 0.5)


def test_inference_tensors_run_without_the_check():
    """Tensors made under torch.inference_mode keep no version counter: the run goes on unchecked."""
    with torch.inference_mode():
        x0 = torch.ones(2, 2)
        s = solve(three_level_ladder(), x0, t0=0.0, t1=1.0, steps=3, rates=[5.0, 5.0])
    assert s.x.shape == (2, 2)


def test_too_many_steps_name_steps_not_an_internal_argument():
    """Item 28: steps=10**20 used to complain about `depth`, which the caller never passed."""
    for diffusion in (None, 0.5):
        with pytest.raises(ValueError, match=r"steps: expected at most 2\*\*51"):
            solve(
                three_level_ladder(), torch.zeros(2, 1), t0=0.0, t1=1.0, steps=10**20, diffusion=diffusion, rates=[1, 1]
            )


def test_a_level_whose_output_shape_changes_mid_run_is_named():
    """Item 28: a level checked only at its first use broke later with a raw broadcasting error."""
    calls = []

    def shifty(x, t):
        calls.append(1)
        return -x if len(calls) < 3 else -x[:, :1]

    lad = Ladder([lambda x, t: -x, shifty], [1, 2], ["a", "b"])
    for method in ("em", "mlem"):
        calls.clear()
        with pytest.raises(ValueError, match=r"level 2 \(b\): output shape \(4, 1\) differs from the state's shape"):
            solve(lad, torch.ones(4, 2), t0=0.0, t1=1.0, steps=6, method=method, rates=[1e6])


def test_a_level_whose_dtype_changes_mid_run_is_named():
    calls = []

    def shifty(x, t):
        calls.append(1)
        return -x if len(calls) < 2 else (-x).double()

    lad = Ladder([lambda x, t: -x, shifty], [1, 2], ["a", "b"])
    with pytest.raises(TypeError, match=r"level 2 \(b\): output dtype/device torch.float64/cpu differs"):
        solve(lad, torch.ones(4, 2), t0=0.0, t1=1.0, steps=6, method="em")


@pytest.mark.parametrize("shape", [(3,), (4, 2, 2), (5, 2)])
def test_a_diffusion_of_the_wrong_shape_is_named(shape):
    """Item 28: a g(x, t) that does not broadcast to the state (or would grow it) is named, not a raw torch error."""
    g = torch.ones(shape)
    with pytest.raises(ValueError, match=r"diffusion: g\(x, t\) returned shape .* does not broadcast to the state's"):
        solve(three_level_ladder(), torch.zeros(4, 2), t0=0.0, t1=1.0, steps=3, diffusion=lambda x, t: g, rates=[1, 1])
    # ... also when it changes shape after the first step
    calls = []

    def late(x, t):
        calls.append(1)
        return torch.ones(4, 1) if len(calls) < 3 else g

    with pytest.raises(ValueError, match=r"diffusion: g\(x, t\) returned shape .* at t=0.4"):
        solve(three_level_ladder(), torch.zeros(4, 2), t0=0.0, t1=1.0, steps=5, diffusion=late, rates=[1, 1])


def test_diffusions_that_broadcast_give_the_same_numbers_as_a_full_tensor():
    x0 = torch.zeros(4, 2, dtype=F64)
    kw = dict(t0=0.0, t1=1.0, steps=8, rates=[3.0, 3.0])
    ref = solve(three_level_ladder(), x0, diffusion=0.5, generator=torch.Generator().manual_seed(1), **kw).x
    for g in (torch.tensor(0.5, dtype=F64), torch.full((4, 1), 0.5, dtype=F64), torch.full((2,), 0.5, dtype=F64)):
        x = solve(
            three_level_ladder(), x0, diffusion=lambda x, t, g=g: g, generator=torch.Generator().manual_seed(1), **kw
        ).x
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-15)


def test_ml_em_keeps_its_per_step_probabilities_compact():
    """Also noticed: a long ML-EM run kept ~680 bytes per step (the probabilities as lists, and every step's draw
    selectors of a run made up front); now the probabilities take 8 bytes per value and the selectors are made
    step by step.  Bounds: what stays after the run < 40 bytes per step, the peak < 300 (transient lists of one
    run of steps); the probabilities read as before."""
    steps = 20000
    tracemalloc.start()
    try:
        s = solve(
            three_level_ladder(),
            torch.zeros(2, 2),
            t0=0.0,
            t1=1.0,
            steps=steps,
            rates=[steps / 10, steps / 40],
            generator=torch.Generator().manual_seed(0),
        )
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current / steps < 40 and peak / steps < 300, (current / steps, peak / steps)
    assert isinstance(s.probabilities, StepProbabilities) and len(s.probabilities) == steps
    assert s.probabilities[0] == [0.1, 0.025] and s.probabilities[-1] == s.probabilities[steps - 1]
    rows = [s.probabilities[n] for n in range(steps)]
    assert s.probabilities == rows and s.probabilities[:2] == rows[:2] and s.probabilities != rows[:-1]
    assert all(p == pytest.approx([0.1, 0.025], rel=1e-9) for p in rows)


class _Scale(torch.nn.Module):
    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, t):
        return -self.a * x


def test_levels_as_a_module_list():
    """Item 18's sibling: a torch.nn.ModuleList of levels was refused as "a single callable"."""
    mods = torch.nn.ModuleList([_Scale(1.0), _Scale(0.9)])
    kw = dict(t0=0.0, t1=1.0, steps=4, rates=[3.0])
    a = solve(Ladder(mods, [1, 2]), torch.ones(3, 2), generator=torch.Generator().manual_seed(0), **kw).x
    b = solve(Ladder(list(mods), [1, 2]), torch.ones(3, 2), generator=torch.Generator().manual_seed(0), **kw).x
    assert torch.equal(a, b)
    den = MultilevelDenoiser(mods, costs=[1, 2], rates=[3.0])
    den.set_step(0.25)
    assert den(torch.ones(3, 2), 0.5).shape == (3, 2)
    with pytest.raises(TypeError, match="single callable"):
        Ladder(_Scale(1.0), [1])
