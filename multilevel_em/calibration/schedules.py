"""Planning schedules of models for a user's pipeline from measurements along its own trajectories.

What :meth:`multilevel_em.diffusion.MultilevelModel.calibrate` measures when ``run(num_inference_steps)``
runs the user's pipeline from fixed noise (:class:`PipelineMeasurements`), and how :func:`plan_schedules`
turns it into candidates with predicted cost and error at a budget.

Error is the pathwise RMS (over images and elements) of the pipeline's output against the top model's
output with ``reference_steps`` calls from the same noise. Predicted error of a candidate at N calls:

- the top model alone: e(N), the measured step-error curve (log-log interpolation between the measured
  call counts; no extrapolation beyond them);
- a deterministic switch (level j for the first fraction f of the calls): its own error, measured by running it
  at each of the measured call counts and interpolated the same way;
- ML-EM with the closed-form rates sized to the budget (:func:`~multilevel_em.calibration.planning.plan_calls`):
  sqrt(e(N)^2 + V), V = sum_n g_n^2 sum_l (1 / p_{n,l} - 1) delta_l(t_n)^2 the variance the draws add,
  propagated to the output by the measured sensitivity g_n = s(t_n) span_n of the output to a perturbation of
  the model output at call n (perturbations along the ladder's difference f^K - f^1 with a random sign per image
  and call, on blocks of calls; delta_l per element);
- a hybrid (a cheaper level alone for the first calls, as a measured switch, then ML-EM with closed-form rates
  sized to the rest of the budget): sqrt(e_switch(N)^2 + V_tail), V summed over the ML-EM calls only.

No fitted fudge factor enters; each term is measured on the user's pipeline.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.call_schedule import CallSchedule
from .model import Calibration
from .pipeline_measurements import PipelineMeasurements
from .planning import plan_calls  # the one planner of closed-form rates for a fixed call grid

__all__ = ["PipelineMeasurements", "ScheduleCandidate", "SchedulePlan", "plan_schedules", "step_error"]


def _interpolate(steps: Sequence[int], errors: Sequence[Optional[float]], calls: int) -> Optional[float]:
    """Log-log interpolation of measured errors over call counts (entries None are skipped); None outside the
    measured counts (no extrapolation)."""
    pts = [(n, e) for n, e in zip(steps, errors) if e is not None]
    if not pts or not pts[0][0] <= calls <= pts[-1][0]:
        return None
    n, e = (np.asarray(v, dtype=np.float64) for v in zip(*pts))
    if np.any(e <= 0):
        return float(np.interp(calls, n, e))
    return float(np.exp(np.interp(np.log(calls), np.log(n), np.log(e))))


def step_error(meas: PipelineMeasurements, calls: int) -> Optional[float]:
    """e(calls): the top model alone's measured error, log-log interpolated between measured call counts; None
    outside them (no extrapolation)."""
    return _interpolate(meas.steps, meas.step_errors, calls)


@dataclass(frozen=True)
class ScheduleCandidate:
    """One schedule a plan compared: ``name``, ``predicted_error`` (RMS per element against the reference),
    ``predicted_cost`` (top-level equivalents per image), ``num_inference_steps`` and the ``schedule``.

    With the distributional criterion also: ``fd`` (Frechet distance of its output features to the
    reference outputs' on the calibration batch, measured by running it), ``fd_ci`` (bootstrap interval),
    ``fd_minus_top`` and ``fd_minus_top_ci`` (paired difference to the top model alone at floor(budget) steps).
    ``kind`` says which family it is: ``"top"`` (the top model alone), ``"switch"`` (a cheaper level for the
    first calls, the top model after), ``"mlem"`` (ML-EM at every call) or ``"hybrid"`` (a cheaper level for
    the first calls, ML-EM after)."""

    name: str
    predicted_error: float
    predicted_cost: float
    num_inference_steps: int
    schedule: CallSchedule = field(repr=False)
    fd: Optional[float] = None
    fd_ci: Optional[Tuple[float, float]] = None
    fd_minus_top: Optional[float] = None
    fd_minus_top_ci: Optional[Tuple[float, float]] = None
    kind: str = "schedule"


@dataclass(frozen=True)
class SchedulePlan:
    """What :func:`plan_schedules` compared and picked: ``candidates`` (best of each kind by predicted error),
    ``choice``, ``budget``, ``message`` (what it picked and what the top model alone would give),
    ``pipeline_kwargs`` (pass them to the pipeline call: ``num_inference_steps``), ``criterion``
    (``"pathwise"`` or ``"distribution"``) and ``switches`` (every switch that fits the budget, the
    distributional criterion's extra candidates)."""

    candidates: Tuple[ScheduleCandidate, ...]
    choice: ScheduleCandidate
    budget: float
    message: str
    pipeline_kwargs: Dict = field(default_factory=dict)
    criterion: str = "pathwise"
    switches: Tuple[ScheduleCandidate, ...] = ()


Grid = Callable[[int], Tuple[Sequence[float], Sequence[float]]]


def _mlem_calls(cal: Calibration, meas, budget: float, times: np.ndarray, spans: np.ndarray):
    """Closed-form ML-EM rates sized to ``budget`` over the given calls, and the variance they add at the output.

    Returns ``(levels, p, V)``: the sub-ladder, p of shape (calls, corrections), and
    V = sum_n g_n^2 sum_l (1 / p_{n,l} - 1) delta_l(t_n)^2 (RMS per element, squared); None where the budget
    does not cover the base level at every call."""
    try:
        plan = plan_calls(cal, budget, times, spans)
    except ValueError:  # the budget does not cover the base level at every call
        return None
    lv = plan.levels
    delta, _ = cal.corrections(lv)
    d = np.stack([np.interp(times, cal.times, delta[:, k]) for k in range(delta.shape[1])], 1)
    d = d / math.sqrt(meas.elements)  # per-row L2 norm -> RMS per element
    p = np.asarray(plan.probabilities, dtype=np.float64).reshape(len(times), -1)
    # a correction that never fires (p = 0) adds no variance when its levels agree there, and a bias otherwise
    safe = np.maximum(p, 1e-300)
    var_calls = np.where(p > 0, (1.0 / safe - 1.0) * d**2, np.where(d > 0, np.inf, 0.0)).sum(1)
    g = meas.sensitivity_at(times) * spans
    return lv, p, float((g**2 * var_calls).sum())


def _mlem_candidate(cal: Calibration, meas, budget: float, calls: int, grid: Grid) -> Optional[ScheduleCandidate]:
    e = step_error(meas, calls)
    if e is None:
        return None
    times, spans = (np.asarray(a, dtype=np.float64) for a in grid(calls))
    out = _mlem_calls(cal, meas, budget, times, spans)
    if out is None:
        return None
    lv, p, V = out
    sched = CallSchedule.mlem([tuple(row) for row in p], cal.n_levels, levels=lv)
    return ScheduleCandidate(
        f"ML-EM, {calls} calls (levels {', '.join(str(l + 1) for l in lv)})",
        math.sqrt(e**2 + V),
        sched.expected_cost(cal.costs),
        calls,
        sched,
        kind="mlem",
    )


def _hybrid_candidate(
    cal: Calibration, meas, budget: float, calls: int, grid: Grid, level: int, fraction: float, errors
) -> Optional[ScheduleCandidate]:
    """Level ``level`` alone for the first round(fraction * calls) calls (a measured switch), then ML-EM with
    closed-form rates sized to the rest of the budget. Predicted error: sqrt(e_switch^2 + V_tail), the switch's
    measured error (its bias and the discretization) and the variance the tail's draws add."""
    e = _interpolate(meas.steps, errors, calls)
    first = int(round(fraction * calls))
    if e is None or not 0 < first < calls:
        return None
    costs = np.asarray(cal.costs, dtype=np.float64)
    tail_budget = budget - first * costs[level] / costs[-1]
    if tail_budget <= 0:
        return None
    times, spans = (np.asarray(a, dtype=np.float64) for a in grid(calls))
    out = _mlem_calls(cal, meas, tail_budget, times[first:], spans[first:])
    if out is None:
        return None
    lv, p, V = out
    if np.all(p >= 1.0):  # every correction fires: this is the plain switch, already a candidate
        return None
    K = cal.n_levels
    sched = CallSchedule(
        ((level,),) * first + (tuple(lv),) * (calls - first),
        ((),) * first + tuple(tuple(row) for row in p),
        K,
        "hybrid",
    )
    return ScheduleCandidate(
        f"level {level + 1} for the first {first} of {calls} calls, then ML-EM (levels "
        f"{', '.join(str(l + 1) for l in lv)})",
        math.sqrt(e**2 + V),
        sched.expected_cost(costs),
        calls,
        sched,
        kind="hybrid",
    )


def plan_schedules(
    cal: Calibration, meas: PipelineMeasurements, budget: float, grid: Grid, *, max_calls: Optional[int] = None
) -> SchedulePlan:
    """Candidates at equal expected cost (at most ``budget`` top-level equivalents per image) and the pick.

    Args:
        cal: the level differences delta_l(t) along the pipeline's trajectories and the levels' costs.
        meas: the pipeline measurements (step-error curve, sensitivity, switch errors).
        budget: top-level equivalents per image; at least one call of the cheapest level.
        grid: ``grid(N) -> (times, spans)`` of the pipeline's scheduler with N calls (one call per timestep).
        max_calls: the most calls ML-EM may use (default: the largest measured call count).

    Returns:
        A :class:`SchedulePlan`: the top model alone at floor(budget) calls, the best deterministic switch,
        the best ML-EM over call counts and the best hybrid (switch first, ML-EM after), each the lowest
        predicted error of its kind, and the lowest of all.
    """
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise TypeError(f"budget: expected a number of top-level equivalents per image, got {budget!r}") from None
    grid = functools.lru_cache(maxsize=None)(grid)  # each call count's grid once (ML-EM and every hybrid use it)
    costs = np.asarray(cal.costs, dtype=np.float64)
    K = len(costs)
    cheapest = costs[0] / costs[-1]
    if not (math.isfinite(budget) and budget >= cheapest * (1 - 1e-12)):
        raise ValueError(
            f"budget: {budget:g} top-level equivalents per image is below one call of the cheapest schedule "
            f"(one call of level 1, {cheapest:.3g})"
        )
    if meas.num_levels and meas.num_levels != K:
        raise ValueError(f"calibration: measured on a ladder of {meas.num_levels} levels, this one has {K}")
    kinds: Dict[str, List[ScheduleCandidate]] = {"top": [], "switch": [], "mlem": [], "hybrid": []}
    n_top = int(math.floor(budget + 1e-9))
    if n_top >= 1:
        e = step_error(meas, n_top)
        if e is not None:
            kinds["top"].append(
                ScheduleCandidate(
                    f"top model alone, {n_top} calls",
                    e,
                    float(n_top),
                    n_top,
                    CallSchedule.top_alone(n_top, K),
                    kind="top",
                )
            )
    for level, frac, errors in meas.switches:
        if level >= K - 1:
            continue
        # the most calls whose switch fits the budget
        for n in range(int(meas.steps[-1]), 0, -1):
            s = CallSchedule.switch(n, K, level, frac)
            if s.expected_cost(costs) <= budget * (1 + 1e-12):
                e = _interpolate(meas.steps, errors, n)
                if e is not None and s.biased_calls:
                    kinds["switch"].append(
                        ScheduleCandidate(
                            f"level {level + 1} for the first {len(s.biased_calls)} of {n} calls, then the top model",
                            e,
                            s.expected_cost(costs),
                            n,
                            s,
                            kind="switch",
                        )
                    )
                break
    top_calls = int(max_calls) if max_calls is not None else int(meas.steps[-1])
    for n in range(max(n_top + 1, 1), top_calls + 1):
        c = _mlem_candidate(cal, meas, budget, n, grid)
        if c is not None:
            kinds["mlem"].append(c)
    for level, frac, errors in meas.switches:
        if level >= K - 1:
            continue
        for n in range(1, top_calls + 1):
            c = _hybrid_candidate(cal, meas, budget, n, grid, level, frac, errors)
            if c is not None:
                kinds["hybrid"].append(c)
    candidates = tuple(min(v, key=lambda c: c.predicted_error) for v in kinds.values() if v)
    if not candidates:
        raise ValueError(
            f"budget: no schedule at {budget:g} top-level equivalents per image falls within the measured call "
            f"counts ({meas.steps[0]}..{meas.steps[-1]}); calibrate with steps= that cover it"
        )
    choice = min(candidates, key=lambda c: (c.predicted_error, c.predicted_cost))
    top = next((c for c in candidates if c.kind == "top"), None)
    if top is None:
        tail = "the top model alone has no measured error at this budget."
    elif top is choice:
        tail = "no other schedule is predicted to do better at this cost."
    else:
        tail = (
            f"the top model alone with {top.num_inference_steps} calls is predicted to reach {top.predicted_error:.4g} "
            f"({top.predicted_error / max(choice.predicted_error, 1e-300):.2f}x the error)."
        )
    message = (
        f"Picked {choice.name}: predicted error {choice.predicted_error:.4g} (RMS against the top model with "
        f"{meas.reference_steps} calls) for {choice.predicted_cost:.3g} top-level equivalents per image; {tail}"
    )
    return SchedulePlan(
        candidates,
        choice,
        budget,
        message,
        {"num_inference_steps": choice.num_inference_steps},
        switches=tuple(kinds["switch"]),
    )
