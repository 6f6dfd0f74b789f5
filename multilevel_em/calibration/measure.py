"""Measuring a ladder: level costs, level differences delta_l(t), errors, gamma, step error.

:func:`calibrate` evaluates every level of a ladder on states along trajectories of the
SDE and returns a :class:`~multilevel_em.calibration.model.Calibration`, from which the
closed-form rates lambda_l(t) = mu delta_l(t) / sqrt(C_l) (docs/method.md, "Choosing the rates"), cost
predictions and plans are computed without touching the ladder again.

Norms are Euclidean per sample (over all state entries) and averaged in mean square over
the batch: ``rms(a, b) = sqrt(mean_b ||a_b - b_b||^2)``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from numbers import Real
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .._fit import loglog_slope as _fit_gamma
from ..engine import BrownianPath, Ladder, solve
from .model import TIMINGS, Calibration

__all__ = ["calibrate", "MIN_STATES", "MIN_TIMES"]

#: The fewest states (batch size) a calibration accepts: RMS differences from fewer are noise.
MIN_STATES = 8
#: The fewest calibration times: delta_l(t) is interpolated between them.
MIN_TIMES = 2
#: Default number of calibration times (equally spaced in [t0, t1)).
DEFAULT_N_TIMES = 9
#: Default number of EM steps of the calibration trajectories (a multiple of 9, so the
#: default times fall on the grid).
DEFAULT_STEPS = 72

_TIMINGS = TIMINGS
_COST_UNITS = {"wall": "seconds per sample", "flops": "FLOPs per sample", "given": "ladder cost units"}


# ----------------------------------------------------------------------------- small helpers


def _rms(a: torch.Tensor, b: Optional[torch.Tensor] = None) -> float:
    """sqrt(mean over the batch of the squared Euclidean norm of a - b); a, b: (batch, ...)."""
    d = a if b is None else a - b
    return float(d.reshape(d.shape[0], -1).double().pow(2).sum(1).mean().sqrt())


def _same_device(requested: torch.device, actual: torch.device) -> bool:
    if requested.type != actual.type:
        return False
    return requested.index is None or actual.index is None or requested.index == actual.index


def _check_times(times, t0: float, t1: float) -> np.ndarray:
    try:
        arr = np.asarray([float(t) for t in times], dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"times: expected a sequence of numbers, got {times!r}") from None
    if arr.ndim != 1:
        raise ValueError(f"times: expected a 1-d sequence of times, got shape {arr.shape}")
    if len(arr) < MIN_TIMES:
        raise ValueError(
            f"times: calibration needs at least {MIN_TIMES} times to interpolate delta_l(t), got {len(arr)}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"times: expected finite times, got {arr.tolist()}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"times: expected strictly increasing times, got {arr.tolist()}")
    if arr[0] < t0 or arr[-1] > t1:
        raise ValueError(f"times: expected times in [t0, t1] = [{t0}, {t1}], got {arr.tolist()}")
    return arr


def _check_batch(name: str, batch: int) -> None:
    if batch < MIN_STATES:
        raise ValueError(
            f"{name}: calibration needs at least {MIN_STATES} states per time to estimate RMS differences, got {batch}"
        )


def _check_output(what: str, out, x: torch.Tensor, t: float) -> None:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what}: expected an output shaped like the state {tuple(x.shape)}, got {shape}")
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"{what} produced NaN or Inf at t={t:.6g}")


# ----------------------------------------------------------------------------- costs


def _wall_costs(ladder: Ladder, x: torch.Tensor, t: float, warmup: int, repeats: int) -> List[float]:
    """Median wall-clock seconds per sample of one evaluation of each level on ``x``."""
    cuda = x.device.type == "cuda"
    costs = []
    for _j, f in enumerate(ladder):
        seconds = []
        for r in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            f(x, t)
            if cuda:
                torch.cuda.synchronize(x.device)
            if r >= warmup:
                seconds.append(time.perf_counter() - start)
        costs.append(max(statistics.median(seconds), 1e-12) / x.shape[0])
    return costs


def _flop_costs(ladder: Ladder, x: torch.Tensor, t: float) -> List[float]:
    """FLOPs per sample of one evaluation of each level, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    costs = []
    for j, f in enumerate(ladder):
        counter = FlopCounterMode(display=False)
        with counter:
            f(x, t)
        flops = counter.get_total_flops()
        if flops <= 0:
            raise ValueError(
                f"timing='flops': level {j + 1} ({ladder.names[j]}) counted 0 FLOPs; FlopCounterMode only counts "
                "torch matrix products and convolutions run inside the call, so this level is not made of such "
                "torch ops. Use timing='wall' or timing='given'"
            )
        costs.append(flops / x.shape[0])
        if j and costs[j] < costs[j - 1]:  # the file would be refused too (Calibration.from_dict)
            raise ValueError(
                f"timing='flops': level {j + 1} ({ladder.names[j]}) counted {costs[j]:.4g} FLOPs per sample, fewer "
                f"than level {j} ({ladder.names[j - 1]}, {costs[j - 1]:.4g}); the ladder's levels are out of order "
                "for this count (cheapest first). Reorder them, or use timing='given' or 'wall'"
            )
    return costs


# ----------------------------------------------------------------------------- calibrate


@torch.no_grad()
def calibrate(
    ladder: Ladder,
    x: Optional[torch.Tensor] = None,
    *,
    t0: float,
    t1: float,
    times: Optional[Sequence[float]] = None,
    states: Optional[torch.Tensor] = None,
    diffusion=None,
    reference: Optional[Callable] = None,
    timing: str = "wall",
    steps: int = DEFAULT_STEPS,
    noise: Optional[BrownianPath] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    warmup: int = 2,
    repeats: int = 5,
    step_error: bool = True,
    step_error_refine: int = 8,
    fit_gamma: bool = True,
) -> Calibration:
    """Measure a ladder along trajectories of dX = f^K(X, t) dt + g dW.

    What it measures, with ``K = len(ladder)`` levels and ``T`` calibration times:

    * states: by default, EM with the top level from ``x`` over [t0, t1] with ``steps``
      steps, taking the states at the grid times nearest to ``times`` (the times actually
      used are stored). Or pass ``states`` (and ``times``) directly.
    * costs per level (``timing``): ``"given"``: ``ladder.costs``; ``"wall"``: median
      wall-clock seconds per sample of one evaluation on ``x`` (after ``warmup`` untimed
      calls, ``repeats`` timed ones, CUDA synchronised); ``"flops"``: FLOPs per sample
      counted by ``torch.utils.flop_counter.FlopCounterMode``.
    * the pairwise RMS differences ``rms(f^l, f^j)`` at every time, a (T, K, K) array;
      delta_l(t) = rms(f^l, f^{l-1}) is its subdiagonal (levels of a sub-ladder use other
      entries).
    * the error of each level against ``reference`` (a drift ``f(x, t)``), or against the
      top level when ``reference`` is None: a (T, K) array, pooled over times into one RMS
      per level; and gamma, fitted by least squares of log(cost) = gamma log(1/error) + c
      over the levels with a nonzero error (the top level is left out when it is the
      reference), with its standard error.
    * for planning (``step_error=True``, needs ``x``): the EM step-error coefficient ``a``
      (strong error of EM with the top level at t1 ~ a h: order 1, as for additive noise),
      from EM runs with N = ``steps`` and m N steps (m = ``step_error_refine``) on one
      Brownian path: ``a = rms(X_N - X_mN) / (h_N - h_mN)``. This is exact if the errors
      of the two runs are fully correlated and at most 1 / (1 - 1/m) - 1 too large (15% for
      m = 8) if they are independent; m = 2 would be cheaper but overestimates up to 2.2x
      (we saw 1.6x on the HTMC problems). And, when ``reference`` is given, the top level's
      pathwise bias ``rms(X^K_mN - X^ref_mN)`` of two EM runs with m N steps on that path
      (their step errors mostly cancel); else 0 (the top level is the target).

    Args:
        ladder: the levels f^1..f^K, K >= 2.
        x: initial states, shape ``(batch, *state_shape)``; also the batch timed for
            ``"wall"``/``"flops"``. May be None when ``states`` is given (then ``states[0]``
            is timed, and ``step_error`` is skipped).
        t0, t1: the time interval of the SDE.
        times: calibration times in [t0, t1], increasing, at least 2. Default: 9 equally
            spaced times ``t0 + k (t1 - t0) / 9``, k = 0..8 (the drift is never evaluated
            at t1).
        states: optional, shape ``(len(times), batch, *state_shape)``: states at ``times``,
            e.g. from a sampler you trust; then no trajectory is run for them.
        diffusion: g as for :func:`~multilevel_em.solve` (None: an ODE).
        reference: optional true drift ``f(x, t)``; errors and the bias are measured
            against it.
        timing: ``"wall"`` (default), ``"flops"`` or ``"given"``.
        steps: EM steps of the calibration trajectory (default 72).
        noise: optional :class:`BrownianPath` for the trajectories (covering [t0, t1],
            shaped like ``x``); by default one is drawn from ``generator``.
        generator: seeds the default Brownian path.
        device: where to time the levels; must be ``x``'s device (timing elsewhere would
            measure the wrong machine), so it is only a check.
        warmup, repeats: untimed and timed calls per level for ``timing="wall"``.
        step_error: measure the step-error coefficient and the bias (EM runs of m N steps
            with the top level and, if given, the reference).
        step_error_refine: m above, an int >= 2 (default 8).
        fit_gamma: fit gamma; with False, ``Calibration.gamma`` is None and fewer than 2
            usable levels is not an error.

    Returns:
        A :class:`Calibration`.

    Raises:
        ValueError: fewer than 2 levels, fewer than ``MIN_STATES`` (8) states or
            ``MIN_TIMES`` (2) times, fewer than 2 levels usable for the gamma fit, a timing
            device different from the data's, a level counting 0 FLOPs, non-finite outputs.

    Warns:
        UserWarning: when a level's error is not below the previous level's (it costs at
            least as much and is not more accurate); ``Calibration.plan`` will likely drop it.
    """
    _, t0, t1, fine_steps = _check_arguments(ladder, x, t0, t1, timing, steps, step_error_refine, reference, states)
    t_arr, picked, x_end, noise = _calibration_states(
        ladder, x, t0, t1, times, states, steps, fine_steps, diffusion, noise, generator
    )
    costs = _level_costs(ladder, x if x is not None else picked[0], float(t_arr[0]), timing, device, warmup, repeats)
    pairwise, errors_t = _level_differences(ladder, t_arr, picked, reference)
    errors = np.sqrt((errors_t**2).mean(0))
    _warn_not_improving(ladder.names, errors)
    gamma, gamma_se, fit_levels = _gamma_fit(costs, errors, reference, fit_gamma)
    a = bias = None
    bias_source = "none"
    if step_error and x is not None:
        a, bias, bias_source = _step_error_and_bias(
            ladder, x, t0, t1, steps, fine_steps, diffusion, noise, generator, reference, x_end
        )

    return Calibration(
        t0=t0,
        t1=t1,
        times=t_arr,
        names=tuple(ladder.names),
        costs=np.asarray(costs, dtype=np.float64),
        ladder_costs=np.asarray(ladder.costs, dtype=np.float64),
        timing=timing,
        cost_unit=_COST_UNITS[timing],
        pairwise=pairwise,
        errors_t=errors_t,
        reference="given" if reference is not None else "top",
        n_states=int(picked[0].shape[0]),
        gamma=gamma,
        gamma_se=gamma_se,
        fit_levels=tuple(fit_levels),
        step_error=a,
        step_error_steps=steps if a is not None else None,
        step_error_refine=step_error_refine if a is not None else None,
        top_bias=bias,
        top_bias_source=bias_source,
    )


def _check_arguments(ladder, x, t0, t1, timing, steps, step_error_refine, reference, states) -> tuple:
    """Check calibrate's arguments; (K, t0, t1, fine_steps) with the times as floats and fine_steps = m N."""
    if not isinstance(ladder, Ladder):
        raise TypeError(f"ladder: expected a multilevel_em.Ladder, got {type(ladder).__name__}")
    K = len(ladder)
    if K < 2:
        raise ValueError(f"ladder: calibration is for ML-EM, which needs at least 2 levels, got {K}")
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, (Real, torch.Tensor)) or not math.isfinite(float(v)):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    t0, t1 = float(t0), float(t1)
    if not t1 > t0:
        raise ValueError(f"t1: expected t1 > t0, got t0={t0}, t1={t1}")
    if timing not in _TIMINGS:
        raise ValueError(f"timing: expected one of {_TIMINGS}, got {timing!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if isinstance(step_error_refine, bool) or not isinstance(step_error_refine, int) or step_error_refine < 2:
        raise ValueError(f"step_error_refine: expected an int >= 2, got {step_error_refine!r}")
    fine_steps = step_error_refine * steps
    if reference is not None and not callable(reference):
        raise TypeError(f"reference: expected a drift f(x, t) or None, got {type(reference).__name__}")
    if x is None and states is None:
        raise ValueError("x: give the initial states x (batch, *state_shape), or states= with times=")
    if x is not None:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.dtype.is_floating_point:
            raise ValueError(f"x: expected a floating tensor of shape (batch, *state_shape), got {x!r:.80}")
        _check_batch("x", x.shape[0])
    return K, t0, t1, fine_steps


def _calibration_states(ladder, x, t0, t1, times, states, steps, fine_steps, diffusion, noise, generator) -> tuple:
    """The states the levels are compared on: ``states`` at ``times`` as given, or EM with the top level
    from ``x`` (``steps`` steps on ``noise``, drawn from ``generator`` when None) at the grid times nearest
    ``times``.  Returns (times (T,), [T tensors (batch, ...)], the trajectory's end or None, the noise)."""
    if states is not None:
        if times is None:
            raise ValueError("times: required with states= (one time per states[i])")
        t_arr = _check_times(times, t0, t1)
        if not isinstance(states, torch.Tensor) or states.ndim < 2 or not states.dtype.is_floating_point:
            raise ValueError("states: expected a floating tensor of shape (len(times), batch, *state_shape)")
        if states.shape[0] != len(t_arr):
            raise ValueError(f"states: expected {len(t_arr)} time slices (one per time), got {states.shape[0]}")
        _check_batch("states", states.shape[1])
        if x is not None and tuple(states.shape[2:]) != tuple(x.shape[1:]):
            raise ValueError(f"states: state shape {tuple(states.shape[2:])} differs from x's {tuple(x.shape[1:])}")
        picked = list(states)
        x_end = None
    else:
        span = t1 - t0
        requested = (
            t0 + span * np.arange(DEFAULT_N_TIMES) / DEFAULT_N_TIMES if times is None else _check_times(times, t0, t1)
        )
        h = span / steps
        idx = np.rint((requested - t0) / h).astype(np.int64)
        if np.any(np.diff(idx) == 0):
            raise ValueError(
                f"times: {requested.tolist()} are closer than the step h = {h:g} of the calibration trajectory; "
                "increase steps or spread the times"
            )
        t_arr = t0 + idx * h
        save_every = math.gcd(steps, *[int(i) for i in idx])
        if noise is None and diffusion is not None:
            noise = _default_noise(x, t0, t1, fine_steps, generator)
        sol = solve(
            ladder, x, t0=t0, t1=t1, steps=steps, diffusion=diffusion, method="em", noise=noise, save_every=save_every
        )
        picked = [sol.xs[int(i) // save_every] for i in idx]
        x_end = sol.x  # EM with `steps` steps: reused by the step-error estimate
    return t_arr, picked, x_end, noise


def _level_costs(ladder, timing_x, t, timing, device, warmup, repeats) -> List[float]:
    """Cost of one evaluation of each level per sample, as ``timing`` says, measured on ``timing_x`` at ``t``."""
    if device is not None and not _same_device(torch.device(device), timing_x.device):
        raise ValueError(
            f"device: levels would be timed on {torch.device(device)} but the data is on {timing_x.device}; "
            "timing on another device than the data's measures the wrong machine: move x (or states) there first"
        )
    if timing == "given":
        costs = list(ladder.costs)
    elif timing == "wall":
        costs = _wall_costs(ladder, timing_x, t, warmup, repeats)
    else:
        costs = _flop_costs(ladder, timing_x, t)
    return costs


def _level_differences(ladder, t_arr, picked, reference) -> tuple:
    """Pairwise RMS differences of the levels at each time, (T, K, K), and each level's RMS error against
    ``reference`` (or the top level), (T, K)."""
    K = len(ladder)
    pairwise = np.zeros((len(t_arr), K, K))
    errors_t = np.zeros((len(t_arr), K))
    for i, (t, s) in enumerate(zip(t_arr.tolist(), picked)):
        outs = [f(s, t) for f in ladder]
        for j, o in enumerate(outs):
            _check_output(f"level {j + 1} ({ladder.names[j]})", o, s, t)
        for l in range(K):
            for j in range(l):
                pairwise[i, l, j] = pairwise[i, j, l] = _rms(outs[l], outs[j])
        if reference is None:
            errors_t[i] = pairwise[i, :, K - 1]
        else:
            ref = reference(s, t)
            _check_output("reference", ref, s, t)
            errors_t[i] = [_rms(o, ref) for o in outs]
    return pairwise, errors_t


def _gamma_fit(costs, errors, reference, fit_gamma: bool) -> tuple:
    """gamma and its standard error, fitted on the levels with a nonzero error (the top level left out when it is
    the reference), and those levels; (None, None, []) without ``fit_gamma``."""
    K = len(errors)
    gamma = gamma_se = None
    fit_levels: List[int] = []
    if fit_gamma:
        candidates = range(K - 1) if reference is None else range(K)
        fit_levels = [l for l in candidates if errors[l] > 0 and math.isfinite(errors[l])]
        if len(fit_levels) < 2:
            raise ValueError(
                f"fitting gamma needs at least 2 levels with a nonzero error (3 for a standard error), got "
                f"{len(fit_levels)}"
                + (" (the top level is the reference, so it is not used)" if reference is None else "")
                + "; add levels, pass reference=, or pass fit_gamma=False"
            )
        gamma, gamma_se = _fit_gamma([costs[l] for l in fit_levels], [errors[l] for l in fit_levels])
    return gamma, gamma_se, fit_levels


def _default_noise(x: torch.Tensor, t0: float, t1: float, finest_steps: int, generator) -> BrownianPath:
    """A Brownian path for x whose leaves are narrower than half the finest step used on it."""
    depth = max(1, math.ceil(math.log2(finest_steps)) + 1)
    return BrownianPath(x.shape, t0, t1, generator=generator, dtype=x.dtype, device=x.device, depth=depth)


def _step_error_and_bias(ladder, x, t0, t1, steps, fine_steps, diffusion, noise, generator, reference, x_n=None):
    """EM step-error coefficient a (error ~ a h) and the top level's pathwise bias.

    a = rms(X_N - X_mN) / (h_N - h_mN) for EM with the top level on one Brownian path
    (N = steps, m N = fine_steps): with errors e_N ~ a h_N, X_N - X_mN ~ a (h_N - h_mN) when
    they are fully correlated. The bias is rms(X^K_mN - X^ref_mN) on the same path; 0
    without a reference. ``x_n``: the end of the calibration trajectory (EM with ``steps``
    steps on ``noise``), when there was one.
    """
    if noise is None and diffusion is not None:
        noise = _default_noise(x, t0, t1, fine_steps, generator)
    kw = dict(t0=t0, t1=t1, diffusion=diffusion, method="em", noise=noise)
    if x_n is None:
        x_n = solve(ladder, x, steps=steps, **kw).x
    x_fine = solve(ladder, x, steps=fine_steps, **kw).x
    span = t1 - t0
    a = _rms(x_n, x_fine) / (span / steps - span / fine_steps)
    if reference is None:
        return a, 0.0, "the top level is the reference"
    x_ref = solve(Ladder([reference], [1.0], names=["reference"]), x, steps=fine_steps, **kw).x
    return a, _rms(x_fine, x_ref), f"EM with {fine_steps} steps, top level vs reference, same Brownian path"


def _warn_not_improving(names: Sequence[str], errors: np.ndarray) -> None:
    for l in range(1, len(errors)):
        if errors[l] >= errors[l - 1]:
            warnings.warn(
                f"level {l + 1} ({names[l]}) is not more accurate than level {l} ({names[l - 1]}): error "
                f"{errors[l]:.4g} >= {errors[l - 1]:.4g}, at no lower cost; the ladder's accuracy does not improve "
                f"there (plan() will drop level {l + 1} if it does not pay for itself)",
                UserWarning,
                stacklevel=3,
            )
