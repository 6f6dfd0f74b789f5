"""Planning from a calibration: the rate scale mu, the step count and the levels to keep.

Two planners, both over a :class:`~multilevel_em.Calibration` ``cal`` (:class:`~multilevel_em.Calibration`'s
``plan`` and ``plan_calls`` call them):

* :func:`plan`: for a target error or a budget, on a uniform grid whose step count it chooses, over every
  sub-ladder keeping the top level; the error model (an approximation, read it)::

      error^2 = bias^2 + (a h)^2 + V(mu, h),   V = sum_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)

  ``bias``: the top level's pathwise error against the reference; ``a h``: EM's strong error at step h
  (or, inside a measured sampler, its measured step-error curve, with V scaled by its measured gain);
  ``V``: the variance the Bernoulli draws add, as if independent and not propagated by the dynamics.
* :func:`plan_calls`: the closed-form rates sized to a budget for a sampler whose model calls are fixed
  (:func:`multilevel_em.calibration.rates.closed_form_probabilities`).

The verdicts (does ML-EM help, against what) are worded in :mod:`.verdicts`.  Costs: ``cal.cost_unit``
per sample, or top-level equivalents (divided by the top level's cost); errors: RMS, state units.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .prediction import PLAN_POINTS, Prediction, cost_stats, predict, probabilities, profile, rates, variances
from .rates import closed_form_probabilities, expected_cost, search_mu
from .samplers import SamplerFit
from .verdicts import call_plan_message, em_verdict, sampler_verdict

__all__ = [
    "BUDGET_TOLERANCE",
    "CallPlan",
    "Plan",
    "budget_steps",
    "choose",
    "plan",
    "plan_calls",
    "plan_for_budget",
    "sampling_plan",
]

#: A plan for a budget with a fixed step count may fall this far (relative) below the budget, no more.
BUDGET_TOLERANCE = 0.02


@dataclass
class Plan:
    """What :meth:`Calibration.plan` chose, and what it predicts.

    Use it as ``solve(plan.select(ladder), x0, t0=..., t1=..., steps=plan.steps,
    rates=plan.rates, method="mlem", ...)``.

    Attributes:
        levels: kept levels, 0-based (``Ladder.select`` indices), always with the top level.
        names: their names.
        dropped: the levels left out, 0-based.
        mu, steps: rate scale and uniform step count.
        rates: the rates for the kept levels' corrections (callables of t).
        target, budget: what was asked (one of them is None).
        error: predicted RMS pathwise error at t1, ``sqrt(bias^2 + step_error^2 + randomization^2)``.
        bias, step_error, randomization: its three parts (``a h`` and ``sqrt(V)``; inside a measured
            ``sampler``: its measured step error at ``steps`` and ``sqrt(gain V)``).
        cost, top_equivalents, ladder_cost: predicted ML-EM cost per sample (calibration
            unit, top-level equivalents, ladder units).
        em_steps, em_cost, em_top_equivalents: EM with the top level reaching ``error``
            (predicted by EM's measured curve in :attr:`Calibration.samplers` when there is one, else by
            ``a h``; without randomization).
        speedup: ``em_cost / cost``; for a plan inside a measured ``sampler``:
            ``best_single["top_equivalents"] / top_equivalents``.
        helps: ``speedup > 1``.
        message: a sentence saying the above, for humans (levels numbered from 1 there).
        prediction: the full :class:`Prediction` of the chosen configuration.
        sampler: the sampler planned for (None: the EM model above).
        same_sampler: the top level alone with ``sampler`` at ML-EM's cost: ``{"sampler", "steps",
            "top_equivalents", "error"}`` (``steps = floor(top_equivalents)``).
        best_single: the cheapest single-model run among the calibration's measured samplers that
            reaches ``error`` (same keys); None if none does within ``max_steps``.
        best_at_budget: the smallest predicted error of a single-model run among the measured
            samplers at ML-EM's cost (same keys).
    """

    levels: Tuple[int, ...]
    names: Tuple[str, ...]
    dropped: Tuple[int, ...]
    mu: float
    steps: int
    rates: list = field(repr=False)
    target: Optional[float]
    budget: Optional[float]
    error: float
    bias: float
    step_error: float
    randomization: float
    cost: float
    top_equivalents: float
    ladder_cost: float
    em_steps: int
    em_cost: float
    em_top_equivalents: float
    speedup: float
    helps: bool
    message: str
    prediction: Prediction = field(repr=False)
    sampler: Optional[str] = None
    same_sampler: Optional[dict] = None
    best_single: Optional[dict] = None
    best_at_budget: Optional[dict] = None

    def select(self, ladder):
        """The sub-ladder of ``ladder`` with the kept levels (``ladder.select(self.levels)``)."""
        if len(ladder) != len(self.levels) + len(self.dropped):
            raise ValueError(
                f"ladder: the plan is for a ladder of {len(self.levels) + len(self.dropped)} levels, got {len(ladder)}"
            )
        return ladder.select(list(self.levels))

    def to_dict(self) -> dict:
        """Plain data (the rates as their values at the calibration times are left out)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rates", "prediction")}
        d["prediction"] = self.prediction.to_dict()
        return d


@dataclass
class CallPlan:
    """What :meth:`Calibration.plan_calls` chose for a fixed grid of model calls (a sampler's).

    Attributes:
        levels, names: kept levels (0-based) and their names; all levels, the top included.
        mu: rate scale of :meth:`Calibration.rates`.
        rates: the closed-form rates lambda_l(t) for those levels (callables of t).
        probabilities: p_{n,l} = min(1, lambda_l(t_n) span_n) per call, shape (calls, L - 1).
        budget: the budget asked, top-level equivalents per sample.
        calls: the number of model calls of the grid.
        top_equivalents: predicted expected cost per sample, top-level equivalents (the top
            model alone at every call costs ``calls``).
        evaluations: expected evaluations of each kept level per sample.
        added_variance: ``sum_n span_n^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)``, the variance
            the draws add to the time integral of the model output (output units x time
            squared), before the sampler's own weighting of each call.
        message: a sentence saying the above.
    """

    levels: Tuple[int, ...]
    names: Tuple[str, ...]
    mu: float
    rates: list = field(repr=False)
    probabilities: np.ndarray = field(repr=False)
    budget: float
    calls: int
    top_equivalents: float
    evaluations: Tuple[float, ...]
    added_variance: float
    message: str

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("rates", "probabilities")}
        d["probabilities"] = self.probabilities.tolist()
        return d


def plan(
    cal,
    target: Optional[float] = None,
    *,
    budget: Optional[float] = None,
    steps: Optional[int] = None,
    max_steps: int = 2**16,
    sampler: Optional[str] = None,
) -> Plan:
    """Choose mu, the step count and the levels to keep, for a target error or a budget.

    Error model (module docstring): ``error^2 = bias^2 + (a h)^2 + V(mu, h)``.

    * ``target`` (an RMS pathwise error at t1, state units): for every sub-ladder that
      keeps the top level (all 2^(K-1) of them: a level that does not pay for itself
      is dropped) and every step count (geometric, ratio sqrt(2), from the fewest whose
      step error leaves room for V, or exactly ``steps``), the smallest mu with
      ``V(mu) <= target^2 - bias^2 - (a h)^2``; keeps the cheapest. EM with the top level
      is sized by ``bias^2 + (a h)^2 <= target^2``. For one sub-ladder the step counts
      stop once 3 in a row bring no gain, or when its base level alone costs more than
      the best plan so far. 2^(K-1) sub-ladders: meant for ladders of up to ~12 levels.
    * ``budget`` (cost per sample in top-level equivalents): the same search, taking the
      largest mu whose expected cost fits the budget and keeping the smallest predicted
      error; EM is then sized to reach that error.

    Args:
        target: RMS pathwise error to reach; give it or ``budget``.
        budget: cost per sample in top-level equivalents (``cost_unit`` / top cost).
        steps: fix the step count instead of searching (an int >= 1).
        max_steps: the largest step count a plan may have: ``steps`` above it, or a ``target`` that needs
            more steps (EM's step error, or the sampler's, alone above it at ``max_steps``), raise ValueError.
        sampler: plan ML-EM inside this measured sampler (a key of :attr:`samplers`): its
            measured step-error curve replaces ``a h`` and its measured gain scales ``V``
            (:mod:`multilevel_em.calibration.samplers`); the plan is then compared with the
            top level alone in the same sampler at the same cost and with the cheapest
            single-model run of any measured sampler reaching the same error, and
            ``helps`` / ``message`` come from that comparison. None: the EM model.

    Returns:
        A :class:`Plan`; ``plan.helps`` is False (and ``plan.message`` says so) when
        ML-EM is not predicted to beat EM with the top level (or, with ``sampler``, the
        cheapest single-model run reaching the same error).

    Raises:
        ValueError: the target is at or below the top level's own bias (unreachable with
            this ladder; the message gives both numbers), the target cannot be met within
            ``max_steps`` (the message gives the steps it needs), the step error at ``steps`` alone
            exceeds the target, ``steps`` exceeds ``max_steps``, the budget cannot pay one step of the cheapest level, or
            the calibration has no step-error/bias measurement (calibrate with ``x``).
    """
    if (target is None) == (budget is None):
        raise ValueError("plan: give exactly one of target= (an RMS error) or budget= (top-level equivalents)")
    fit = cal.sampler_fit(sampler) if sampler is not None else None
    if (fit is None and cal.step_error is None) or cal.top_bias is None:
        raise ValueError(
            "plan: this calibration has no step-error measurement (it was run without x or with "
            "step_error=False); calibrate with the initial states x to plan"
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps: expected an int >= 1 or None, got {steps!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
    if steps is not None and steps > max_steps:
        raise ValueError(f"steps={steps} is above max_steps={max_steps}; lower steps or raise max_steps")
    K = cal.n_levels
    b = float(cal.top_bias)
    step_err = step_error_model(cal, fit)
    gain = (lambda n: 1.0) if fit is None else fit.gain_at
    c_top = float(cal.costs[-1])
    subsets = [(*mid, K - 1) for r in range(K - 1) for mid in combinations(range(K - 1), r + 1)]

    if target is not None:
        target = check_positive("target", target)
        if target <= b:
            raise ValueError(
                f"target {target:.4g} is unreachable: the top level's own pathwise bias is {b:.4g} "
                f"({cal.top_bias_source}), {b - target:.4g} above the target ({b / target:.3g}x); "
                f"no rates or step count remove it. Ask for a target above {b:.4g} or add a better top level"
            )
        room = target**2 - b**2
        n_min = fewest_steps(cal, step_err, fit, room, max_steps)
        if steps is not None:
            if step_err(steps) ** 2 >= room:
                raise ValueError(
                    f"steps={steps}: the step error alone, {step_err(steps):.4g}, leaves no room under "
                    f"target {target:.4g} (bias {b:.4g}); use steps >= {n_min}"
                )
            step_grid = [steps]
        else:
            step_grid = geometric_steps(n_min, max_steps)
        lv, n, mu = _cheapest_for_target(cal, subsets, step_grid, room, step_err, gain)
    else:
        budget = check_positive("budget", budget)
        limit = budget * c_top
        c_min = float(cal.costs.min())
        if limit < c_min:
            raise ValueError(
                f"budget {budget:.4g} top-level equivalents is too small: one step of the cheapest level alone "
                f"costs {c_min / c_top:.4g} top-level equivalents"
            )
        best = _most_accurate_for_budget(cal, subsets, limit, steps, max_steps, b, step_err, gain)
        if best is None:
            raise ValueError(
                f"budget {budget:.4g} top-level equivalents cannot pay steps={steps} of any level that can "
                f"serve as the base of a sub-ladder (the cheapest costs {c_min / c_top:.4g} per step)"
            )
        _, lv, n, mu = best
    return make_plan(cal, lv, n, mu, target, budget, fit)


def _cheapest_for_target(cal, subsets, step_grid, room: float, step_err, gain) -> tuple:
    """The cheapest (levels, steps, mu) over ``subsets`` and ``step_grid`` whose predicted ``step_err(n)^2 +
    gain(n) V(mu)`` fits ``room`` (the target squared less the bias squared): per configuration the smallest such
    mu; a sub-ladder's step counts stop after 3 without gain or once its base level alone costs more."""
    best = None
    for lv in subsets:
        c = cal.costs[np.asarray(lv)]
        stalled, sub_best = 0, math.inf
        for n in step_grid:
            if best is not None and n * c[0] >= best[0]:
                break  # the base level alone costs more than the best plan so far
            d_true, rpm, w, h = profile(cal, lv, n, False, PLAN_POINTS)
            v_room = room - step_err(n) ** 2
            fits = lambda m: gain(n) * variances(m, d_true, rpm, w, h) <= v_room  # noqa: E731
            mu = search_mu(fits, rpm * h, smallest=True)
            cost = float(expected_cost(probabilities(np.array([mu]), rpm, h), c, w)[0])
            if best is None or cost < best[0]:
                best = (cost, lv, n, mu)
            # Cost against steps falls, then flattens or rises: stop after 3 steps without gain.
            stalled = stalled + 1 if cost > sub_best * (1 - 1e-3) else 0
            sub_best = min(sub_best, cost)
            if stalled >= 3:
                break
    _, lv, n, mu = best
    return lv, n, mu


def _most_accurate_for_budget(cal, subsets, limit: float, steps, max_steps: int, b: float, step_err, gain):
    """The (error^2, levels, steps, mu) with the smallest predicted error whose expected cost fits ``limit``
    (cost units per sample), over ``subsets`` and their affordable step counts (or exactly ``steps``); per
    configuration the largest affordable mu.  None when no sub-ladder can pay ``steps``."""
    best = None
    for lv in subsets:
        c = cal.costs[np.asarray(lv)]
        n_max = int(math.floor(limit / c[0] * (1 + 1e-12)))
        if steps is not None:
            grid = [steps] if steps <= n_max else []
        else:
            grid = geometric_steps(1, min(n_max, max_steps)) if n_max >= 1 else []
        stalled, sub_best = 0, math.inf
        for n in grid:
            d_true, rpm, w, h = profile(cal, lv, n, False, PLAN_POINTS)
            affordable = lambda m: expected_cost(probabilities(m, rpm, h), c, w) <= limit  # noqa: E731
            mu = search_mu(affordable, rpm * h, smallest=False)
            err2 = b**2 + step_err(n) ** 2 + gain(n) * float(variances(np.array([mu]), d_true, rpm, w, h)[0])
            if best is None or err2 < best[0]:
                best = (err2, lv, n, mu)
            stalled = stalled + 1 if err2 > sub_best * (1 - 1e-3) else 0
            sub_best = min(sub_best, err2)
            if stalled >= 3:
                break
    return best


def step_error_model(cal, fit: Optional[SamplerFit]):
    """steps -> predicted step error of the top level alone: ``a h`` (EM) or the sampler's measured curve."""
    if fit is not None:
        return fit.error
    a, T = float(cal.step_error), cal.t1 - cal.t0
    return lambda n: a * T / n


def fewest_steps(cal, step_err, fit, room: float, max_steps: int) -> int:
    """The fewest steps whose step error squared is below ``room`` (ValueError if none within max_steps)."""
    if fit is None:
        a, span = float(cal.step_error), cal.t1 - cal.t0
        need = a * span / math.sqrt(room)  # EM's step error a T / n is below sqrt(room) for n > need
        if not need < max_steps:
            target = math.sqrt(room + float(cal.top_bias) ** 2)
            n_need = f"{math.floor(need) + 1:,}" if need < 1e15 else f"about {need:.3g}"
            raise ValueError(
                f"target {target:.4g} cannot be met within max_steps={max_steps:,}: EM's step error a h "
                f"(a = {a:.4g}) alone is {step_err(max_steps):.4g} at {max_steps:,} steps, above the "
                f"{math.sqrt(room):.4g} the target leaves after the top level's bias {float(cal.top_bias):.4g}; it "
                f"needs {n_need} steps. Raise the target or max_steps"
            )
        return math.floor(need) + 1
    n = fit.steps_for(math.sqrt(room) * (1 - 1e-9), max_steps)
    if n is None:
        target = math.sqrt(room + float(cal.top_bias) ** 2)
        raise ValueError(
            f"target {target:.4g} cannot be met within max_steps={max_steps:,}: the top level alone with "
            f"{fit.sampler} does not reach error {math.sqrt(room):.4g} (the target less the top level's bias) "
            f"within {max_steps:,} steps (predicted {step_err(max_steps):.4g} there). Raise the target or max_steps"
        )
    return n


def plan_calls(
    cal, budget: float, times: Sequence[float], spans: Sequence[float], *, levels: Optional[Sequence[int]] = None
) -> CallPlan:
    """Closed-form rates sized to ``budget`` for a sampler whose model calls are fixed.

    Where :func:`plan` chooses the step count of a uniform EM grid, this takes the calls a
    sampler makes (a diffusers scheduler's timesteps): call n at time ``times[n]`` with
    probabilities p_{n,l} = min(1, lambda_l(t_n) ``spans[n]``), lambda = :func:`~multilevel_em.calibration.prediction.rates`
    (mu), and picks the largest mu whose expected cost (the cost-sharing rule of
    :func:`~multilevel_em.calibration.prediction.predict`) fits ``budget`` top-level equivalents per sample.

    Args:
        budget: top-level equivalents per sample, at least one call of the cheapest kept
            level per call; a budget of ``len(times)`` or more pays the top level at every
            call (then every p is 1 and ML-EM is the top model).
        times: the calls' times, in the calibration's time variable, shape (calls,).
        spans: the time each call stands for (> 0), shape (calls,).
        levels: optional 0-based sub-ladder (with the top level), default all.

    Returns:
        A :class:`CallPlan`.
    """
    budget = check_positive("budget", budget)
    ts = np.asarray(times, dtype=np.float64).reshape(-1)
    span = np.asarray(spans, dtype=np.float64).reshape(-1)
    if ts.size == 0 or ts.shape != span.shape:
        raise ValueError(f"times, spans: expected two equal-length non-empty sequences, got {ts.size} and {span.size}")
    if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(span)) and np.all(span > 0)):
        raise ValueError("times, spans: expected finite times and spans > 0")
    lv = cal.level_indices(levels)
    delta, C = cal.corrections(lv)
    # Per call: delta_l(t_n) span_n (the correction's size integrated over the call's span) and
    # p_{n,l} / mu; the uniform-grid helpers then apply with h = 1.
    d_true = np.stack([np.interp(ts, cal.times, delta[:, k]) for k in range(len(C))], 1) * span[:, None]
    rpm = d_true / np.sqrt(C)
    c = cal.costs[np.asarray(lv)]
    c_top = float(cal.costs[-1])
    calls = len(ts)
    base = calls * float(c[0]) / c_top
    if budget < base * (1 - 1e-12):
        raise ValueError(
            f"budget {budget:.4g} top-level equivalents per sample is too small: the cheapest kept level "
            f"({cal.names[lv[0]]}) at each of the {calls} calls alone costs {base:.4g}"
        )
    w = np.ones(calls)
    mu, p = closed_form_probabilities(rpm, c, budget * c_top, weights=w)
    evaluations, mean, _, added = cost_stats(cal, lv, np.array([mu]), d_true, rpm, w, 1.0)
    added = float(added[0])
    te = float(mean[0] / c_top)
    message = call_plan_message(lv, mu, budget, calls, te, all_ones=bool(np.all(p >= 1.0)))
    return CallPlan(
        levels=lv,
        names=tuple(cal.names[l] for l in lv),
        mu=mu,
        rates=rates(cal, mu, levels=lv),
        probabilities=p,
        budget=budget,
        calls=calls,
        top_equivalents=te,
        evaluations=tuple(float(e) for e in evaluations[0]),
        added_variance=added,
        message=message,
    )


def make_plan(cal, lv, n, mu, target, budget, fit: Optional[SamplerFit] = None) -> Plan:
    """The :class:`Plan` of levels ``lv``, ``n`` steps and rate scale ``mu``: its prediction, error parts, the
    comparison with EM (``fit`` None) or with the measured single-model samplers, and its verdict."""
    b, T = float(cal.top_bias), cal.t1 - cal.t0
    c_top = float(cal.costs[-1])
    pred = predict(cal, mu, n, levels=lv)
    step_err = step_error_model(cal, fit)
    gain = 1.0 if fit is None else fit.gain_at(n)
    error = math.sqrt(b**2 + step_err(n) ** 2 + gain * pred.added_variance)
    room = error**2 - b**2
    em_fit = cal.samplers.get("em")
    if em_fit is not None:  # EM's own measured curve, where there is one
        em_steps = em_fit.steps_for(math.sqrt(room) * (1 + 1e-9), 2**20) or 2**20
    elif cal.step_error is not None:
        a = float(cal.step_error)
        em_steps = 1 if a == 0 else max(1, math.ceil(a * T / math.sqrt(room) * (1 - 1e-9)))
    else:  # a sampler plan on a calibration without the EM measurement
        em_steps = 0
    em_cost = em_steps * c_top
    dropped = tuple(l for l in range(cal.n_levels) if l not in lv)
    extra = {}
    if fit is None:
        speedup = em_cost / pred.cost
        message = em_verdict(lv, mu, n, error, pred.top_equivalents, target, budget, em_steps, em_cost / c_top, speedup)
    else:
        extra = single_model_comparison(cal, fit, error, pred.top_equivalents, max(n, 2**16))
        best = extra["best_single"]
        speedup = math.inf if best is None else best["top_equivalents"] / pred.top_equivalents
        message = sampler_verdict(
            fit.sampler,
            lv,
            mu,
            n,
            error,
            pred.top_equivalents,
            target,
            budget,
            extra["same_sampler"],
            best,
            extra["best_at_budget"],
            speedup,
        )
    helps = speedup > 1
    return Plan(
        levels=tuple(lv),
        names=tuple(cal.names[l] for l in lv),
        dropped=dropped,
        mu=mu,
        steps=n,
        rates=rates(cal, mu, levels=lv),
        target=target,
        budget=budget,
        error=error,
        bias=b,
        step_error=step_err(n),
        randomization=math.sqrt(gain * pred.added_variance),
        cost=pred.cost,
        top_equivalents=pred.top_equivalents,
        ladder_cost=pred.ladder_cost,
        em_steps=em_steps,
        em_cost=em_cost,
        em_top_equivalents=em_cost / c_top,
        speedup=speedup,
        helps=helps,
        message=message,
        prediction=pred,
        sampler=None if fit is None else fit.sampler,
        **extra,
    )


def single_model_comparison(cal, fit: SamplerFit, error: float, cost: float, max_steps: int) -> dict:
    """The top level alone: with ``fit``'s sampler at ML-EM's ``cost`` (top-level equivalents), the
    cheapest measured sampler reaching ``error``, and the smallest error of any measured sampler at ``cost``."""
    b2 = float(cal.top_bias) ** 2
    n_same = max(1, int(math.floor(cost + 1e-9)))

    def run(f: SamplerFit, steps: int) -> dict:
        return {
            "sampler": f.sampler,
            "steps": steps,
            "top_equivalents": float(steps),
            "error": math.sqrt(b2 + f.error(steps) ** 2),
        }

    fits = [fit] + [f for k, f in sorted(cal.samplers.items()) if k != fit.sampler]
    reach = []
    for f in fits:
        steps = f.steps_for(math.sqrt(max(error**2 - b2, 0.0)), max_steps)
        if steps is not None:
            reach.append(run(f, steps))
    return {
        "same_sampler": run(fit, n_same),
        "best_single": min(reach, key=lambda r: r["steps"]) if reach else None,  # ties: the same sampler
        "best_at_budget": min((run(f, n_same) for f in fits), key=lambda r: r["error"]),
    }


def check_positive(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {v!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {v}")
    return v


def geometric_steps(lo: int, hi: int) -> List[int]:
    """Step counts lo, ~lo sqrt(2), ~2 lo, ... up to hi (both included), increasing."""
    out, k = [], 0
    while True:
        n = int(math.ceil(lo * 2 ** (k / 2) - 1e-9))
        if n > hi:
            break
        if not out or n > out[-1]:
            out.append(n)
        k += 1
    if not out or out[-1] != hi:
        out.append(hi)
    return out


# ----------------------------------------------------------------------------- budgets, samplers, choices


def budget_steps(budget: float) -> int:
    """The step count of a one-model method for ``budget`` top-level equivalents per sample: floor(budget)
    (up to 1e-9, so that a budget computed as 3 * (1 / 3) * 10 still gives 10)."""
    return int(math.floor(budget + 1e-9))


def plan_for_budget(
    cal,
    budget: float,
    *,
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    tolerance: float = BUDGET_TOLERANCE,
) -> Plan:
    """:func:`plan` for ``budget`` top-level equivalents per sample (``steps``: fixed, else planned; ``sampler``:
    inside that measured sampler).  With ``steps``, a plan spending less than ``(1 - tolerance) budget``
    means the two disagree: ValueError rather than silently following the step count."""
    p = plan(cal, budget=float(budget), steps=steps, sampler=sampler)
    if steps is not None and p.top_equivalents < (1 - tolerance) * budget:
        raise ValueError(
            f"budget={budget!r} and steps={steps!r} disagree: with {steps} steps ML-EM spends at most "
            f"{p.top_equivalents:.4g} top-level equivalents per sample; pass budget= or steps=, not both"
        )
    return p


def sampling_plan(cal, budget: float, *, steps: Optional[int] = None, sampler: str = "em", stacklevel: int = 2) -> Plan:
    """The plan ML-EM inside ``sampler`` follows for ``budget``: :func:`plan_for_budget` inside ``sampler`` when
    ``cal`` measured it; otherwise the EM model (``a h``), with a UserWarning (at ``stacklevel``) unless
    ``sampler`` is "em" (that model is EM's)."""
    measured = sampler in cal.samplers
    if not measured and sampler != "em":
        warnings.warn(
            f"sampler={sampler!r}: the calibration has not measured it, so the plan models EM steps and "
            "cannot say whether ML-EM beats this sampler with the top model alone; measure it with "
            "pipe.calibrate_samplers() (`mlem calibrate --ladder DIR --samplers ...`)",
            stacklevel=stacklevel,
        )
    return plan_for_budget(cal, budget, steps=steps, sampler=sampler if measured else None)


def choose(cal, budget: float) -> dict:
    """The most accurate predicted run for ``budget`` top-level equivalents per sample: among ML-EM planned inside
    each measured sampler and the top level alone with each measured sampler at :func:`budget_steps` steps, the
    smallest predicted error (ties: the cheaper).

    Returns ``{"method", "sampler", "steps", "predicted_error", "predicted_top_equivalents", "candidates"}``
    (``method`` "mlem" or a sampler's name; ``sampler`` None for a one-model run, ``steps`` None for ML-EM: its
    plan's).  ``cal.samplers`` must not be empty."""
    steps = budget_steps(budget)
    cands = []
    for name, fit in sorted(cal.samplers.items()):
        p = plan_for_budget(cal, budget, sampler=name)
        cands.append(
            {
                "method": "mlem",
                "sampler": name,
                "steps": None,
                "predicted_error": p.error,
                "predicted_top_equivalents": p.top_equivalents,
            }
        )
        if steps >= 1:
            err = math.sqrt(float(cal.top_bias or 0.0) ** 2 + fit.error(steps) ** 2)
            cands.append(
                {
                    "method": name,
                    "sampler": None,
                    "steps": steps,
                    "predicted_error": err,
                    "predicted_top_equivalents": float(steps),
                }
            )
    best = min(cands, key=lambda c: (c["predicted_error"], c["predicted_top_equivalents"]))
    return {**best, "candidates": cands}
